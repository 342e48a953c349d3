"""The README's examples are real: its config loads, and the commands it names exist."""

from __future__ import annotations

import re
from pathlib import Path

from trainer.cli import build_parser
from trainer.config import load_config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_the_config_example_loads(tmp_path):
    block = README.split("## Configs", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "run.toml").write_text(block)
    config = load_config(tmp_path / "run.toml")
    assert config.optim.lr_scheduler == "cosine" and config.data.trigger_word == "lsstyle"


def test_every_lora_studio_subcommand_in_the_readme_exists():
    known = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    named = set(re.findall(r"lora-studio ([a-z][a-z-]+)", README))
    assert named <= known, named - known


# -- every command, in order, on a fresh clone ---------------------------------------------------------------
# Commands the README shows as forms to fill in or that need what a clone does not have; each says why.
NOT_RUN = {
    "...": "a form: `...` stands for the reader's own flags",
    "datasets/cats": "the reader's own dataset",
    "upload.zip": "the reader's own archive",
    "--num-processes": "needs several GPUs (tests/test_distributed.py runs it on CPU processes)",
    "--gpus": "needs several GPUs",
    " ID": "ID stands for a job id that `jobs submit` printed",
}


def readme_commands() -> list[list[str]]:
    """Each `lora-studio ...` command of the README's shell blocks, as argv (redirects kept), in order."""
    import shlex

    commands, blocks, block, fence = [], [], [], None
    for line in README.splitlines():  # fences read in order: ``` opens (with its language) and closes
        if line.startswith("```"):
            if fence is None:
                fence, block = line[3:].strip(), []
            else:
                blocks += ["\n".join(block)] if fence in ("bash", "") else []
                fence = None
        elif fence is not None:
            block.append(line)
    for text in blocks:
        for line in text.replace("\\\n", " ").splitlines():
            if "lora-studio " not in line or line.lstrip().startswith(("#", "docker")):
                continue
            words = shlex.split(line, comments=True)
            start = next(i for i, w in enumerate(words) if w.endswith("lora-studio")) + 1
            argv = []
            for word in words[start:]:
                if word in ("|", "&&", ";"):
                    break
                argv.append(word.removesuffix(")"))
            commands.append(argv)
    return commands


def in_clone(path: str) -> bool:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["git", "ls-files", "--", path], cwd=root, capture_output=True, text=True)
    return bool(done.stdout.strip()) if done.returncode == 0 else (root / path).exists()


def test_every_readme_command_parses_and_reads_only_what_exists_or_an_earlier_command_wrote():
    commands = readme_commands()
    assert len(commands) >= 30, "the README's commands were not found"
    flow = Flow()
    checked = 0
    for argv in commands:
        line = " ".join(argv)
        if any(mark in f" {line}" for mark in NOT_RUN):
            continue
        redirect = argv.index(">") if ">" in argv else None
        args = build_parser().parse_args(argv[:redirect])  # a flag the CLI does not know fails here
        flow.run(args, argv[redirect + 1] if redirect else None, line)
        checked += 1
    assert checked >= 20 and not flow.missing, "\n".join(flow.missing)


class Flow:
    """What each command reads and writes, so a command that reads a file nothing wrote is caught."""

    def __init__(self) -> None:
        self.written: set[str] = set()
        self.configs: dict[str, dict] = {}
        self.missing: list[str] = []

    def need(self, path: str | None, line: str) -> None:
        clean = str(path or "").rstrip("/")
        if clean and clean not in self.written and not in_clone(clean):
            self.missing.append(f"`lora-studio {line}` reads {path}, which no earlier command wrote")

    def config_of(self, path: str | None) -> dict:
        from trainer.config import TrainConfig

        if path is None:
            return TrainConfig().to_dict()
        return self.configs.get(path) or (load_config(path).to_dict() if in_clone(path) else TrainConfig().to_dict())

    def run(self, args, redirect: str | None, line: str) -> None:
        command = args.command if args.command != "jobs" else f"jobs {args.jobs_command}"
        if command == "config":
            self.configs[redirect] = self.config_of(args.config)
            self.written.add(redirect)
        elif command == "train":
            self.train(args, line)
        elif command == "tiny-model":
            self.written.add(args.out_dir.rstrip("/"))
        elif command in ("generate", "grid"):
            for lora in args.lora:
                self.need(re.sub(r":[0-9.]+$", "", lora), line)
            self.need(args.base_model if "/" in args.base_model else None, line)
            self.written.add(args.out)
        elif command in ("estimate", "doctor", "caption", "jobs submit"):
            self.need(getattr(args, "config", None) or getattr(args, "dataset", None), line)
            self.need(str(args.config) if command == "jobs submit" else None, line)

    def train(self, args, line: str) -> None:
        from trainer.cli.train import FLAG_FIELDS
        from trainer.config import config_from_dict

        self.need(args.config, line)
        config = self.config_of(args.config)
        for flag, dotted in FLAG_FIELDS.items():
            if getattr(args, flag, None) is not None:
                section, key = dotted.split(".")
                config[section][key] = getattr(args, flag)
        config = config_from_dict(config).to_dict()
        self.need(config["data"]["path"], line)
        base = config["model"]["base_model"]
        self.need(base if "/" in base and Path(base).suffix != "" or base.endswith("/") else None, line)
        out, name = config["export"]["output_dir"], config["export"]["name"]
        if args.resume and not any(p.startswith(f"{args.resume}/checkpoints/step-") for p in self.written):
            self.missing.append(f"`lora-studio {line}` resumes {args.resume}, which has no checkpoint")
        self.written |= {f"{out}/{name}.safetensors", f"{out}/{name}.peft.safetensors", f"{out}/config.toml"}
        self.configs[f"{out}/config.toml"] = config
        every, steps, keep = config["train"]["save_every"], config["train"]["steps"], config["train"]["keep_last"]
        kept = list(range(every, steps + 1, every))[-keep:] if every else []
        self.written |= {f"{out}/checkpoints/step-{k}/lora_0.safetensors" for k in kept}
        self.written |= {f"{out}/checkpoints/step-{k}" for k in kept}


def test_the_config_command_prints_each_fields_help_as_a_comment_and_loads_back(tmp_path, capsys):
    from trainer.cli import main
    from trainer.config import TrainConfig, field_docs

    assert main(["config"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "run.toml").write_text(text)
    assert load_config(tmp_path / "run.toml") == TrainConfig()
    lines = text.splitlines()
    settings = [i for i, line in enumerate(lines) if re.match(r"^[a-z_0-9]+ = ", line)]
    assert len(settings) > 60 and all(lines[i - 1].startswith("# ") for i in settings), "a setting without help"
    first_doc = " ".join(field_docs(type(TrainConfig().train))["steps"].split())[:40]
    assert any(first_doc in line for line in lines), first_doc


def test_the_training_line_says_what_no_mixed_precision_means():
    from trainer.cli.train import precision_words

    assert precision_words("no") == "float32, no mixed precision"  # accelerate's "no" was printed as is
    assert precision_words("bf16") == "bf16 mixed precision"
