"""The dataset doctor's report as text for a terminal or a log: grouped by check, errors first.

    print(format_report(report))
"""

from __future__ import annotations

from itertools import groupby

_TITLES = {"error": "ERRORS (training is refused)", "warning": "WARNINGS", "note": "NOTES"}


def format_report(report, limit: int = 20) -> str:
    """Every finding grouped by level and check (at most `limit` files per check), then the summary."""
    lines = [f"Dataset doctor: {report.root}"]
    for level in ("error", "warning", "note"):
        found = [f for f in report.findings if f.level == level]
        if not found:
            continue
        lines.append(f"{_TITLES[level]}: {len(found)}")
        found.sort(key=lambda f: f.code)
        for code, group in groupby(found, key=lambda f: f.code):
            group = list(group)
            same_fix = len({f.fix for f in group}) == 1
            lines.append(f"  [{code}] {len(group)} file{'s' if len(group) > 1 else ''}")
            for finding in group[:limit]:
                fix = "" if same_fix or not finding.fix else f" {finding.fix}"
                lines.append(f"    {finding.path} {finding.message}.{fix}")
            if len(group) > limit:
                lines.append(f"    ... and {len(group) - limit} more")
            if same_fix and group[0].fix:
                lines.append(f"    fix: {group[0].fix}")
    lines += _summary_lines(report.summary)
    verdict = "OK" if report.ok else "REFUSED"
    counts = [_count(len(report.errors), "error"), _count(len(report.warnings), "warning")]
    if report.skipped:
        counts.append(_count(len(report.skipped), "file") + " skipped")
    if not report.errors and not report.ok:
        counts.append("and the class images below are refused")
    lines.append(f"Result: {verdict}: {', '.join(counts)}")
    if report.class_images is not None:
        lines += ["", "Class images (prior preservation), checked apart from the training images:",
                  format_report(report.class_images, limit)]
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _on(processes: int) -> str:
    return f" on {processes} processes ({processes} x the batch per step)" if processes > 1 else ""


def _summary_lines(summary: dict) -> list[str]:
    if "images" not in summary or "concepts" not in summary:
        return [f"  class images to generate: {summary['to_generate']}"] if "to_generate" in summary else []
    concepts = ", ".join(f"{name or '(root)'}: {c['images']} images x {c['repeats']}"
                         for name, c in summary["concepts"].items())
    buckets = ", ".join(f"{size}: {count}" for size, count in summary["buckets"].items()) or "none"
    limit = summary["token_limit"]
    lines = [
        "Summary",
        f"  images: {summary['images']} ({concepts})",
        f"  samples per epoch (images x repeats): {summary['samples_per_epoch']}",
        f"  steps per epoch at batch size {summary['batch_size']}{_on(summary.get('num_processes', 1))}:"
        f" {summary['steps_per_epoch']}"
        f" ({summary['epochs']} epochs in the configured steps)",
        f"  buckets at {summary['resolution']} px{'' if summary['bucketing'] else ' (bucketing off)'}:"
        f" {buckets}",
        f"  captions: {summary['captions']}",
        f"  caption length: {'checked against ' + str(limit) + ' tokens' if limit else 'not checked'}",
        f"  loss masks: {summary.get('masks', 'none')}",
    ]
    if "class_samples" in summary:  # a class folder: its epochs are the training images' (trainer/data/prior.py)
        lines = [line for line in lines if not line.startswith("  steps per epoch")]
    if "class_samples_per_epoch" in summary:
        lines.append(f"  class samples per epoch: {summary['class_samples_per_epoch']}, as many as the training "
                     "samples, so each epoch has twice the steps of the training images alone")
    return lines
