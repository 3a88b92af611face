"""No measured result in a chapter's prose is typed by hand (issue #14, "Every claim earned").

A chapter puts what its code measured into its text with ``{glue:text}``. This test lists every
number left in the Markdown of each ``chapters/*.md`` once glued values, mathematics, citations,
cross-references, inline code, URLs, labels and names such as ``ResNet-18`` are removed
(``tools/typed_numbers.py`` says exactly what is removed), and requires each one to be explained
by the allow-list below: a **setting** (a value the chapter's code uses or a reader is asked to
use), a **threshold** (a bound a check or a claim uses), a **definition** (a value that follows
from a definition or a derivation on the page), a **sourced fact** (from a cited paper, a
library's documentation or the source article), **arithmetic** (a step of a worked solution from
numbers on the page) or a **name** (the digit 7, the Falcon 9).

An entry is ``(number as written, "category: reason")``, optionally with a third element, a piece
of the line, when the same number is a setting in one place and something else in another. An
entry explains every occurrence of its number in that chapter (or on the lines with its context).
The test fails for each number no entry explains, naming its line, and for each entry that
explains nothing any more, so that the list stays honest.

``PENDING`` holds measured results that chapters still type by hand; they are explained for now,
and ``test_no_measured_result_is_left_typed`` is an expected failure while any are listed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from typed_numbers import TypedNumber, explain, typed_numbers  # noqa: E402  (tools/ is not a package)

CHAPTERS = sorted((ROOT / "chapters").glob("*.md"))
CATEGORIES = {"setting", "threshold", "definition", "sourced fact", "arithmetic", "name"}

# fmt: off
ALLOWED: dict[str, list[tuple[str, ...]]] = {
    "background": [
        ("1.2", "sourced fact: ILSVRC-2012's training images (Krizhevsky et al.)"),
        ("303", "sourced fact: JFT-300M's images (Dosovitskiy et al.)"),
        ("142", "sourced fact: LVD-142M's images (Oquab et al.)"),
        ("4", "sourced fact: about 4 billion images for ViT-22B (Dehghani et al.)"),
        ("400", "sourced fact: CLIP's image-text pairs (Radford et al.)"),
        ("11", "sourced fact: SA-1B's images (Kirillov et al.)"),
        ("1.1", "sourced fact: SA-1B's masks (Kirillov et al.)"),
    ],
    "core_concepts": [],
    "convolutional_networks": [
        ("0.01", "setting: the default recipe's learning rate"),
        ("0.9", "setting: the default recipe's momentum"),
        ("64", "setting: the default recipe's batch size"),
        ("1", "setting: stride 1, padding 1 of the exercises; definition: the jump of a stride-1 stack"),
        ("2", "setting: stride 2 and dilation 2 in the exercise and the summary"),
        ("4", "setting: padding 4 in the exercise"),
        ("28", "setting: MNIST's image side"),
        ("24", "definition: the off-centre weights of a 5 x 5 kernel"),
        ("12", "definition: their mirror pairs"),
        ("12/25", "definition: the odd share expected of independent random weights"),
        ("10,000", "setting: freshly initialised kernels measured"),
        ("28 %", "arithmetic: 1 - 18/25 of the worked solution"),
    ],
    "modern_cnns": [
        ("28", "setting: the base network's input side in the compound-scaling cell"),
        ("56", "setting: twice the base input side (resolution × 2) in the compound-scaling cell"),
        ("256", "setting: the bottleneck's channels in the cost comparison (ResNet-50's first stage)"),
        ("4", "sourced fact: ResNet-50's 3, 4, 6 and 3 bottleneck blocks (He et al.)"),
        ("8", "setting: depth of the experiments' networks; sourced fact: AlexNet's 8 layers (Krizhevsky et al.)"),
        ("152", "sourced fact: ResNet-152's depth (He et al.)"),
        ("5,000", "setting: training images held out for validation"),
        ("0.1", "sourced fact: PyTorch's default batch-norm momentum"),
        ("0.99", "sourced fact: TensorFlow's default batch-norm momentum"),
        ("0.01", "sourced fact: PyTorch's momentum that equals TensorFlow's 0.99"),
        ("1", "setting: a batch of one image, shape (1, C, H, W)"),
        ("0.9", "setting: SGD momentum"),
        ("64", "setting: batch size and channel widths"),
        ("0", "setting: seed"),
        ("20", "setting: a depth of the degradation experiment; sourced fact: He et al.'s 20-layer plain network"),
        ("30", "sourced fact: plain networks of 30 layers trained (He et al.)"),
        ("2", "setting: stride 2, stages 2 and 3"),
        ("128", "setting: channel widths, batch size"),
        ("16", "setting: channel widths; sourced fact: MobileNetV2's narrowest block ends"),
        ("32", "setting: channel width and the deepest network"),
        ("3", "setting: stage 3"),
        ("10,000", "setting: training subset; sourced fact: MNIST's and Fashion-MNIST's test images"),
        ("1,000", "setting: images per class, images timed, the exercise's batch"),
        ("0.05", "setting: peak learning rate"),
        ("64,000", "sourced fact: He et al.'s CIFAR-10 schedule"),
        ("6", "sourced fact: MobileNetV2's expansion ratio (Sandler et al.)"),
        ("320", "sourced fact: MobileNetV2's widest block ends"),
        ("2,048", "sourced fact: ResNet-50's widest stage"),
        ("10", "setting: the exercise's small batch"),
    ],
    "recurrent_networks": [
        ("3", "setting: a hidden state of 3s, batch 3, a forget-gate bias of 3"),
        ("1", "definition: the bound of a gate, a gate near 1; setting: bias 1, clipping at 1"),
        ("7", "setting: sequences of 7 steps; name: the digit 7"),
        ("784", "setting: MNIST's pixels per image"),
        ("64", "setting: hidden units"),
        ("100", "setting: the distance at which the decay is read"),
        ("783", "definition: the first pixel's distance from the last"),
        ("28", "setting: MNIST's rows and columns"),
        ("128", "setting: batch size"),
        ("10", "threshold: inked columns of a stroke row"),
        ("0.5", "threshold: a gate change that counts as a switch"),
        ("0.9", "threshold: a forget gate that counts as long memory"),
        ("28,510", "arithmetic: the exercise's parameter count"),
        ("24,714", "arithmetic: the exercise's parameter count"),
        ("24,938", "arithmetic: the exercise's parameter count"),
        ("0", "definition: pre-activations near 0 at initialisation; setting: a bias of 0"),
    ],
    "attention": [
        ("1", "definition: softmax weights sum to 1; unit variance"),
        ("0", "definition: zero mean"),
        ("16", "setting: keys of the scale experiment, patches of the ViT, the exercise's patch size"),
        ("0/0", "definition: a softmax over no key"),
        ("2", "setting: random shifts of up to 2 pixels"),
        ("60,000", "sourced fact: MNIST's training images"),
        ("90 %", "threshold: the share of attention the glued patch count holds"),
        ("8", "setting: the exercise's patch size"),
        ("197", "arithmetic: 196 patch tokens and the class token"),
        ("95 %", "definition: the confidence level of the Wilson intervals"),
        ("10,000", "sourced fact: MNIST's test images"),
        ("1.3", "sourced fact: ImageNet's training images (Dosovitskiy et al.)"),
        ("14", "sourced fact: ImageNet-21k's images (Dosovitskiy et al.)"),
        ("300", "sourced fact: JFT-300M's images (Dosovitskiy et al.)"),
    ],
    "ablation": [
        ("95 %", "threshold: the level of the paired t-test"),
        ("5 %", "threshold: the level of each paired t-test, and Bonferroni's family-wise level"),
        ("60,000", "sourced fact: MNIST's training images"),
        ("0", "name: the seed of the reliability diagram; definition: a perfect Brier score"),
        ("1", "definition: the largest confidence"),
        ("2", "setting: the largest random shift; definition: the worst Brier score"),
        ("80 %", "threshold: the power asked of the paired test"),
        ("0.2", "threshold: a difference the power calculation asks about"),
        ("0.1", "setting: label smoothing's epsilon; threshold: a difference the power calculation asks about"),
    ],
    "mnist_in_practice": [
        ("0.001", "sourced fact: the article's learning rate"),
        ("0.01", "setting: the learning rate compared with the article's"),
        ("99.2 %", "threshold: the improved recipe's asserted test accuracy"),
        ("10", "sourced fact: the article's epochs; setting: SeedCNN's first channels"),
        ("0.9", "sourced fact: the article's momentum"),
        ("64", "sourced fact: the article's batch size; setting: channel widths"),
        ("70,000", "sourced fact: MNIST's images (LeCun et al.)"),
        ("60,000", "sourced fact: MNIST's training images"),
        ("10,000", "sourced fact: MNIST's test images"),
        ("0", "definition: zero mean after normalisation"),
        ("1", "definition: unit variance after normalisation"),
        ("20", "setting: SeedCNN's second channels"),
        ("320", "arithmetic: 20 x 4 x 4, the article's view size"),
        ("1,280", "arithmetic: 20 x 8 x 8 for a 44 x 44 image"),
        ("32", "setting: BatchNormCNN's first channels"),
        ("2", "setting: the largest random shift"),
        ("21,840", "arithmetic: SeedCNN's parameters counted by hand (asserted in code)"),
        ("260", "arithmetic: the exercise's parameter count"),
        ("5,020", "arithmetic: the exercise's parameter count"),
        ("16,050", "arithmetic: the exercise's parameter count"),
        ("510", "arithmetic: the exercise's parameter count"),
        ("4", "arithmetic: pixels removed by a 5 x 5 convolution"),
        ("16", "arithmetic: the exercise's divisibility and the last test batch"),
        ("29", "arithmetic: the exercise's input sizes"),
        ("31", "arithmetic: the exercise's input sizes"),
    ],
    "pretraining": [
        ("1.28", "sourced fact: ImageNet's labelled training images"),
        ("3.5", "sourced fact: hashtag-labelled images (Mahajan et al.)"),
        ("400", "sourced fact: CLIP's image-text pairs (Radford et al.)"),
        ("3", "setting: three-channel input of ImageNet weights"),
        ("±15", "setting: rotation of the augmentations"),
        ("0.8", "setting: smallest zoom"),
        ("1.2", "setting: largest zoom"),
        ("±2", "setting: random shifts"),
        ("16", "setting: BatchNormCNN's channels"),
        ("32", "setting: BatchNormCNN's channels"),
        ("60,000", "sourced fact: MNIST's and Fashion-MNIST's training images"),
        ("256", "setting: pretraining batch size"),
        ("0.2", "setting: temperature"),
        ("100", "setting: labelled images"),
        ("10", "setting: labels per class; sourced fact: Fashion-MNIST's classes"),
        ("1,000", "setting: labelled images"),
        ("0.003", "setting: peak learning rate"),
        ("200", "setting: fine-tuning steps"),
        ("300", "setting: fine-tuning steps"),
        ("10,000", "sourced fact: Fashion-MNIST's test images"),
        ("70,000", "sourced fact: MNIST's images"),
        ("142", "sourced fact: LVD-142M's images (Oquab et al.)"),
        ("0.5", "setting: the exercise's temperature; sourced fact: Chen et al.'s range"),
        ("1.0", "setting: the exercise's temperature"),
        ("0.1", "sourced fact: Chen et al.'s range of temperatures"),
        ("5,000", "setting: training images held out for validation"),
        ("0", "setting: seed"),
        ("95 %", "definition: the confidence level of the intervals"),
        ("0.05", "sourced fact: the smallest temperature Chen et al. compared"),
        ("1", "sourced fact: the largest temperature Chen et al. compared"),
    ],
    "pretrained_models": [
        ("90 %", "threshold: the share of a weight that a weight decay leaves for it to count as weak"),
        ("1.28", "sourced fact: ILSVRC-2012's training images (Russakovsky et al.)"),
        ("50,000", "sourced fact: ILSVRC-2012's validation images"),
        ("1,000", "sourced fact: ImageNet's classes; setting: labelled images"),
        ("75.1 %", "sourced fact: the TensorFlow release's top-1 accuracy"),
        ("32", "setting: the 32-layer ResNet, the smallest resolution"),
        ("0", "setting: seeds, crop padding; definition: the 0-255 pixel scale"),
        ("255", "definition: the 0-255 pixel scale"),
        ("9", "name: the Falcon 9 rocket"),
        ("1,280", "sourced fact: EfficientNet-Lite0's feature width"),
        ("300", "setting: training steps"),
        ("512", "setting: features of the book's small networks"),
        ("5,000", "setting: images held out for validation"),
        ("1", "setting: seed 1; definition: a speed ratio of 1"),
        ("2", "setting: seed 2; definition: a 2-D projection"),
        ("85 %", "setting: the accuracy at which the standard error is stated"),
        ("100", "setting: labelled images"),
        ("3,000", "setting: labelled images"),
        ("28", "setting: MNIST's image side"),
        ("64", "setting: the input resolution"),
        ("128", "setting: the largest resolution"),
        ("10", "setting: a 10-class head"),
        ("0.01", "setting: weight decay"),
        ("4", "setting: the largest random shift at 64 px"),
        ("±2", "setting: the recipes' random shifts at 28 px"),
        ("50", "setting: batch size"),
        ("98", "sourced fact: download size of torchvision's ResNet-50 weights (no citation on the page)"),
        ("330", "sourced fact: download size of torchvision's ViT-B/16 weights (no citation on the page)"),
        ("85", "sourced fact: download size of DINOv2 ViT-S/14's weights (no citation on the page)"),
    ],
    "detection_segmentation": [
        ("0.9", "threshold: the IoU the box-regression illustration counts steps to"),
        ("101", "sourced fact: COCO's 101 recall points (Lin et al.)"),
        ("16", "setting: the smallest digit side; the heat map's side at stride 4"),
        ("32", "setting: the largest digit side"),
        ("0.1", "threshold: the largest IoU between pasted digits"),
        ("0", "definition: background class, IoU of disjoint boxes, precision past the last recall; setting: seed"),
        ("1", "definition: the IoU of identical boxes; name: the digit 1"),
        ("3", "name: the digit 3; setting: the exercise's 3-pixel box"),
        ("8", "name: the digit 8"),
        ("0.6", "definition: a recall point of COCO's grid"),
        ("3/5", "definition: three objects found in five"),
        ("4", "setting: the backbone's stride; name: the digit 4"),
        ("64", "setting: batch size"),
        ("0.75", "threshold: COCO's strict IoU"),
        ("0.5", "threshold: COCO's IoU for a match"),
        ("0.95", "threshold: COCO's highest IoU"),
        ("0.3", "threshold: the score of a kept detection"),
        ("9", "name: the digit 9"),
        ("10", "setting: the exercise's 10-pixel box"),
    ],
    "augmentation": [
        ("2", "name: the digit 2; setting: a shift of up to 2 pixels", ),
        ("0", "sourced fact: RandAugment's magnitude scale starts at 0 (torchvision); definition: Beta's mass near 0 and 1"),
        ("30", "sourced fact: RandAugment's magnitude scale ends at 30 (torchvision)"),
        ("256", "setting: the batch of 256 images flipped"),
        ("16", "setting: EfficientCNN's widths"),
        ("32", "setting: EfficientCNN's widths"),
        ("64", "setting: EfficientCNN's widths"),
        ("3", "setting: the 3-pixel shift; RandAugment magnitude 3"),
        ("180", "setting: a rotation by 180 degrees"),
        ("6", "name: the digit 6"),
        ("9", "name: the digit 9; setting: RandAugment magnitude 9"),
        ("6s", "name: the digit 6"),
        ("9s", "name: the digit 9"),
        ("0.2", "setting: MixUp's alpha in the exercise; definition: the uniform's mass in two outer tenths"),
        ("1", "setting: alpha = 1; definition: Beta's mass near 0 and 1; setting: 1-pixel shifts"),
        ("15", "setting: RandAugment magnitude 15; setting: ECE's 15 bins"),
        ("300", "sourced fact: DeiT's 300 epochs (Touvron et al.)"),
        ("10 %", "threshold: the exercise's mixing threshold"),
        ("10,000", "setting: draws in the exercise"),
        ("20 %", "definition: the uniform distribution's mass in two outer tenths"),
        ("0.8", "sourced fact: DeiT's MixUp alpha (Touvron et al.)"),
        ("0.1", "sourced fact: the MixUp paper's ImageNet alphas (Zhang et al.)"),
        ("0.4", "sourced fact: the MixUp paper's ImageNet alphas (Zhang et al.)"),
    ],
    "mae": [
        ("100", "setting: labelled images (and per class in the probe set)"),
        ("1,000", "setting: labelled images; test digits measured"),
        ("5,000", "setting: the validation split's size"),
        ("75 %", "sourced fact: the paper's masking ratio (He et al.); setting: the ratio of the demonstrations"),
        ("4", "setting: 4-pixel patches; definition: the patches 75 % masking leaves of 16"),
        ("49", "definition: (28/4)^2 patches"),
        ("7", "setting: the attention chapter's 7-pixel patches"),
        ("16", "definition: (28/7)^2 patches; sourced fact: the paper's 16-pixel patches (He et al.)"),
        ("0", "setting: the masking ratio of the equality check"),
        ("256", "setting: the batch size"),
        ("224", "sourced fact: the paper's image size (He et al.)"),
        ("196", "definition: (224/16)^2 patches"),
        ("28", "setting: MNIST's image side"),
        ("25", "setting: a masking ratio of the sweep (%)"),
        ("50", "setting: a masking ratio of the sweep (%)"),
        ("75", "setting: a masking ratio of the sweep (%)"),
        ("90 %", "setting: a masking ratio of the sweep"),
        ("0.05", "sourced fact: the paper's weight decay (He et al.); setting: pretrain_mae's default"),
        ("0.003", "setting: the pretraining and fine-tuning learning rates"),
        ("800", "sourced fact: the paper's shortest pretraining in epochs (He et al.)"),
        ("1,600", "sourced fact: the paper's longest pretraining in epochs (He et al.)"),
    ],
    "shipping": [
        ("0", "setting: seed 0; the bias grid starts at 0; definition: the zero point of symmetric int8"),
        ("0.01", "setting: AdamW's weight decay"),
        ("1", "setting: batch 1 of the latency column"),
        ("2", "name: the digit 2 of the example; setting: seed 2"),
        ("3", "name: the digit 3 of Hinton et al.'s experiment"),
        ("3s", "name: images of the digit 3"),
        ("3.5", "sourced fact: Hinton et al.'s bias increase for the class 3"),
        ("877", "sourced fact: Hinton et al.'s 3s classified correctly (133 errors)"),
        ("1,010", "sourced fact: the 3s of MNIST's test set (Hinton et al.)"),
        ("996", "sourced fact: Hinton et al.'s 3s correct after the bias change (14 errors)"),
        ("127", "definition: int8's largest value"),
        ("13", "arithmetic: a tenth of 127, rounded"),
        ("7", "name: the digit 7 of the example"),
        ("8", "definition: 8-bit integers"),
        ("10", "setting: the end of the bias grid"),
        ("20", "setting: the students' epochs"),
        ("32", "definition: float32's bits"),
        ("50", "setting: the students' hidden units"),
        ("64", "setting: the batch of the speed columns and of calibration; the 64-pixel images"),
        ("100", "setting: labelled images per class; the images of the sensitivity analysis"),
        ("128", "setting: the batch size"),
        ("255", "definition: the steps between -128 and 127"),
        ("256", "definition: int8's levels"),
        ("95 %", "setting: the interval's coverage"),
        ("1,000", "setting: the probe's labelled and validation images"),
        ("1,280", "definition: Lite0's pooled features"),
        ("2,000", "setting: the Lite0 test images"),
        ("5,000", "setting: the validation split"),
        ("10,000", "setting: the transfer set; definition: MNIST's test images"),
        ("30,000", "setting: the teacher's training images"),
    ],
    "adapting": [
        ("0", "setting: seeds 0, 1 and 2; the label draw's seed; B starts at 0"),
        ("1", "setting: seeds and LoRA rank 1; definition: 1 x 1 convolutions"),
        ("2", "setting: seed 2; definition: 2 x 2 feature maps"),
        ("4", "setting: LoRA rank 4 and alpha 4"),
        ("16", "setting: LoRA rank 16"),
        ("32", "setting: 32-image batches"),
        ("1,000", "setting: labelled training images"),
        ("25,000", "setting: the ViT's MNIST pretraining images"),
        ("100", "setting: labelled images per class"),
        ("2,000", "setting: validation images"),
        ("3,000", "setting: test images"),
        ("256", "setting: the timed batch"),
        ("0.01", "setting: AdamW's weight decay"),
        ("10", "setting: the new classifier's classes"),
        ("1,280", "sourced fact: Lite0's final channels (Tan & Le)"),
        ("8", "definition: AdamW's two float32 moments, 4 bytes each"),
        ("128", "definition: 2 x 2 positions x 32 images"),
        ("90 %", "threshold: the share of the energy counted"),
        ("1/8", "definition: (1/2)^3, a change with no effect winning each of three seeds"),
    ],
    "large_models": [
        ("16", "definition: bytes per parameter of the published accounting, 16-bit numbers, ViT's 16-pixel patches; "
               "setting: ViT-L's 16 heads"),
        ("2", "definition: 2-byte bfloat16 numbers, ZeRO stage 2; setting: a batch of 2, R = 2 processes"),
        ("224", "setting: the image side of ViT-B/16 and ViT-L/16"),
        ("4", "definition: 4-byte float32 step counters; setting: a batch of 4, four steps"),
        ("3", "definition: ZeRO stage 3; setting: three unequal micro-batches, three channels"),
        ("256", "setting: the batch size of the budget"),
        ("15", "sourced fact: the usable memory of a Colab T4 (GB)"),
        ("1", "definition: ZeRO stage 1, a batch of one, rank 1"),
        ("24", "sourced fact: ViT-L/16's blocks (Dosovitskiy et al.)"),
        ("0", "definition: rank 0"),
        ("64", "setting: the checkpointing chain's layers"),
        ("512", "setting: the checkpointing chain's width"),
        ("32", "definition: 8 + 8 + 16 bytes per float64 parameter; setting: the global batch of the FSDP runs"),
        ("128", "setting: the MNIST images of the FSDP runs (4 steps of 32)"),
        ("12", "sourced fact: ViT-B/16's blocks, one checkpointed segment each"),
        ("11", "definition: 12 segments, all but the last checkpointed"),
        ("10", "setting: the accumulation example's batch"),
        ("1,024", "sourced fact: ViT-L/16's width (Dosovitskiy et al.)"),
    ],
    "trends": [
        ("2", "setting: the narrowest width, a depth of 2 blocks"),
        ("32", "setting: widths and channels; the example's 32 ranks"),
        ("128", "setting: batch size"),
        ("0.01", "setting: peak learning rate"),
        ("16", "setting: a width of the sweep"),
        ("60,000", "sourced fact: MNIST's training images"),
        ("64", "setting: BatchNormCNN's channels"),
        ("1", "definition: a speed ratio of 1; setting: a depth of 1 block"),
        ("0", "definition: rank 0, the first process"),
        ("200", "setting: the global batch of the DDP comparison"),
        ("8", "setting: the example's 8 GPUs"),
        ("400", "sourced fact: CLIP's image-text pairs (Radford et al.)"),
        ("1.1", "sourced fact: SA-1B's masks (Kirillov et al.)"),
        ("11", "sourced fact: SA-1B's images (Kirillov et al.)"),
        ("142", "sourced fact: LVD-142M's images (Oquab et al.)"),
        ("3", "setting: a depth of 3 blocks"),
        ("481", "setting: a width of the exercise's networks (the cell checks the counts)"),
        ("23", "setting: a width of the exercise's networks (the cell checks the counts)"),
    ],
}

#: Measured results still typed by hand in chapters: glue them, then delete their entry here.
PENDING: dict[str, list[tuple[str, ...]]] = {}
# fmt: on


def _numbers(path: Path) -> list[TypedNumber]:
    return typed_numbers(path.read_text(encoding="utf-8"))


def _entries(name: str) -> list[tuple[str, ...]]:
    return ALLOWED.get(name, []) + PENDING.get(name, [])


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_number_typed_in_the_prose_is_explained(path):
    unexplained, _ = explain(_numbers(path), _entries(path.stem))
    if unexplained:
        listing = "\n".join(f"  {path.name}:{n.line}: {n.text!r} in …{n.excerpt(50)}…" for n in unexplained)
        pytest.fail(
            f"{len(unexplained)} number(s) typed in the prose of {path.name}: glue measured results with "
            f"{{glue:text}}, or add the setting, threshold, definition or sourced fact to ALLOWED in "
            f"{Path(__file__).name}:\n{listing}",
            pytrace=False,
        )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_allow_list_entry_still_occurs(path):
    _, stale = explain(_numbers(path), _entries(path.stem))
    if stale:
        pytest.fail(f"{path.name}: these entries explain no number any more, remove them: {stale}", pytrace=False)


def test_allow_list_names_chapters_and_categories():
    names = {p.stem for p in CHAPTERS}
    for table in (ALLOWED, PENDING):
        assert set(table) <= names, f"no such chapter: {sorted(set(table) - names)}"
    for chapter, entries in ALLOWED.items():
        for entry in entries:
            assert len(entry) in (2, 3), (chapter, entry)
            category = entry[1].split(":")[0]
            assert category in CATEGORIES, f"{chapter}: {entry}: the reason must start with one of {sorted(CATEGORIES)}"
    for chapter, entries in PENDING.items():
        assert all(len(e) in (2, 3) and e[1].startswith("measured:") for e in entries), chapter


@pytest.mark.xfail(condition=bool(PENDING), strict=True, reason="measured results typed in chapters (see PENDING)")
def test_no_measured_result_is_left_typed():
    listing = "\n".join(f"  {chapter}: {entry}" for chapter, entries in PENDING.items() for entry in entries)
    assert not PENDING, f"measured results still typed by hand:\n{listing}"


SAMPLE = """\
---
jupytext:
  format_version: 0.13
---

(sample-label)=
# Sample 2

The model reaches 98.7 % after 10 epochs, 99.2% with 1,000 more images, loss −0.5.
A rate of 0.001, or 10⁻³, is 3× faster on 60 000 images; 1e-3 and 10x and 1.2M too.
Not these: ResNet-18, VGG-16, ViT-B/16, MNIST-1D, float32, bf16, mAP@0.5, x1, 1D, the 3rd,
{glue:text}`accuracy`, {cite}`he2016deep`, {cite:p}`lecun1998gradient`, {numref}`fig-7`,
{ref}`Table 4 <tab-4>`, {eq}`eq-8`, $x = 5$, `lr=0.1`, [the docs](https://example.org/v2/9),
https://example.org/page/11, 28 × 28 pixels, PyTorch 2.4, Section 4, §3.1, items 1, 2 and 9,
(LeCun et al., 1998), in 2012, the 2012–2016 networks, the 1990s, <img width="300">.

$$
y = 12 x
$$ (eq-sample)

```{code-cell}
x = 13
```

````{exercise}
:label: ex-14

Train for 5 epochs.

```python
print(15)
```
````
"""


def test_the_extractor_catches_typed_numbers_and_skips_the_rest():
    found = [n.text for n in typed_numbers(SAMPLE)]
    assert found == ["2", "98.7 %", "10", "99.2%", "1,000", "−0.5",
                     "0.001", "10⁻³", "3×", "60 000", "1e-3", "10x", "1.2M", "5"]  # fmt: skip
    lines = {n.text: n.line for n in typed_numbers(SAMPLE)}
    assert lines["98.7 %"] == 9 and lines["5"] == 28


def test_the_check_fails_for_an_unexplained_number_and_a_stale_entry():
    numbers = typed_numbers("The network reaches 98.7 % with batches of 64 and a threshold of 0.5.\n")
    entries = [("64", "setting: batch size"), ("0.5", "threshold: IoU", "threshold"), ("0.9", "setting: momentum")]
    unexplained, stale = explain(numbers, entries)
    assert [n.text for n in unexplained] == ["98.7 %"]
    assert stale == [("0.9", "setting: momentum")]
    # a context restricts an entry to the lines that contain it
    unexplained, stale = explain(numbers, [("0.5", "threshold: IoU", "learning rate")])
    assert {n.text for n in unexplained} == {"98.7 %", "64", "0.5"} and len(stale) == 1
