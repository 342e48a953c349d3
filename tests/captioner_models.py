"""Tiny captioning models built locally for the tests (random weights, a few hundred KB, saved with
save_pretrained), so the captioner loading code runs for real with no hub.

    blip = tiny_blip(tmp / "blip")        # BlipForConditionalGeneration + BlipProcessor (BERT tokenizer)
    tagger = tiny_tagger(tmp / "tagger")  # ViTForImageClassification + selected_tags.csv (WD14 columns)

The tagger's classifier is zeroed with fixed biases, so its tags do not depend on the image:
TAGGER_TAGS are the ones over the threshold (best first); `rating_safe` scores high too but is a rating.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "square", "blue", "circle", "on", "white",
         "picture", "of", "green", "triangle"]
# (name, category, bias): category 9 is a rating, 0 general, 4 character
TAGS = [("red_square", "0", 4.0), ("blue_circle", "0", -4.0), ("rating_safe", "9", 5.0), ("^_^", "0", 2.0),
        ("white_background", "0", 3.0)]
TAGGER_TAGS = "red square, white background, ^_^"


def tiny_blip(folder: Path) -> Path:
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder.parent / f"{folder.name}-vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                              tokenizer=BertTokenizer(str(vocab), do_lower_case=True))
    config = BlipConfig(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        text_config={"vocab_size": len(WORDS), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 64, "encoder_hidden_size": 16,
                     "bos_token_id": 2, "sep_token_id": 3, "pad_token_id": 0},
        projection_dim=16,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tiny_tagger(folder: Path) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    config = ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       image_size=32, patch_size=8, num_labels=len(TAGS),
                       id2label={i: name for i, (name, _, _) in enumerate(TAGS)},
                       problem_type="multi_label_classification")
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([bias for _, _, bias in TAGS]))
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    rows = ["tag_id,name,category,count"] + [f"{i},{name},{cat},1" for i, (name, cat, _) in enumerate(TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n")
    return folder
