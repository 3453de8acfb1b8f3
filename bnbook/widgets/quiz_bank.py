"""The book's quiz: questions over chapters 1 to 16 (11 excepted), with feedback for every wrong option.

Chapter 11 shows it with ``book_quiz()``, so the notebook holds no answer key above the quiz.
The numbers in the questions are computed here from closed forms with NumPy;
``tests/test_quiz.py`` checks each against PyTorch.
"""

from __future__ import annotations

import functools

import numpy as np
from matplotlib.figure import Figure

from bnbook.plots import PALETTE
from bnbook.widgets._quiz import Choice, MultiChoice, Numeric, Question, Quiz

__all__ = ["QUIZ_NAME", "RUNNING_VAR_SNIPPET", "SINGLE_EXAMPLE_SNIPPET", "book_questions", "book_quiz"]

QUIZ_NAME = "ch11-quiz"
#: The seed of the batch means in the momentum figure.
FIGURE_SEED = 11

RUNNING_VAR_SNIPPET = """import torch
from torch import nn

bn = nn.BatchNorm1d(1)  # momentum=0.1
x = torch.tensor([[1.0], [3.0], [5.0], [7.0]])
bn(x)
print(bn.running_var)"""

SINGLE_EXAMPLE_SNIPPET = """model = nn.Sequential(
    nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 2)
)
model.train()
prediction = model(torch.randn(1, 10))"""


# --- numbers, from closed forms ---------------------------------------------------------------
def normalized_last(values: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0)) -> float:
    """x̂ of the last value of a batch, with the biased variance and no epsilon."""
    x = np.asarray(values)
    return float((x[-1] - x.mean()) / x.std())


def running_var_after_one(values: tuple[float, ...] = (1.0, 3.0, 5.0, 7.0), momentum: float = 0.1) -> float:
    """``running_var`` after one training step from its initial 1: it takes the unbiased variance."""
    return float((1 - momentum) * 1.0 + momentum * np.var(values, ddof=1))


def eps_shrink(variance: float = 1e-5, eps: float = 1e-5) -> float:
    """The spread of a standardized channel relative to 1: sqrt(var / (var + eps))."""
    return float(np.sqrt(variance / (variance + eps)))


def folded_bias(
    gamma: float = 2.0,
    beta: float = 1.0,
    mean: float = 3.0,
    var: float = 3.0,
    eps: float = 1.0,
    bias: float = 0.5,
) -> float:
    """b' = s (b - mean) + beta with s = gamma / sqrt(var + eps): the bias of a folded layer."""
    s = gamma / np.sqrt(var + eps)
    return float(s * (bias - mean) + beta)


def per_process_noise_ratio(processes: int = 8) -> float:
    """How much larger the standard error of a per-process mean is than a synchronized one: sqrt(P)."""
    return float(np.sqrt(processes))


# --- figures ------------------------------------------------------------------------------------
def momentum_figure() -> Figure:
    """Running means of one feature (true mean 2) under three momenta, labelled A, B and C."""
    rng = np.random.default_rng(FIGURE_SEED)
    batch_means = 2.0 + 0.5 * rng.standard_normal(150)
    fig = Figure(figsize=(6.4, 2.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(batch_means, ".", color="0.45", markersize=4, label="batch means")
    for label, momentum, color, style in (
        ("A", 0.9, PALETTE[0], "-"),
        ("B", 0.1, PALETTE[1], "--"),
        ("C", 0.01, PALETTE[2], ":"),
    ):
        running, curve = 0.0, []
        for m in batch_means:
            running = (1 - momentum) * running + momentum * m
            curve.append(running)
        ax.plot(curve, style, color=color, linewidth=2, label=f"curve {label}")
    ax.axhline(2.0, color="black", linewidth=0.8)
    ax.set(xlabel="training step", ylabel="running mean", title="Three momenta, one stream of batches")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=4, fontsize=9, frameon=False)
    return fig


def gamma_figure() -> Figure:
    """A sigmoid with the range (mean ± 2 std) of a channel after batch norm, for γ = 0.5 and 3, β = 0."""
    z = np.linspace(-7, 7, 400)
    fig = Figure(figsize=(6.4, 2.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(z, 1 / (1 + np.exp(-z)), color="black", linewidth=2, label="sigmoid")
    ax.axvspan(-1.0, 1.0, color=PALETTE[0], alpha=0.35, label="band A")
    ax.axvspan(-6.0, 6.0, color=PALETTE[1], alpha=0.15, hatch="//", label="band B")
    ax.set(
        xlabel="input to the sigmoid",
        ylabel="sigmoid output",
        title="Where a channel's values fall for two values of γ",
    )
    ax.legend(loc="upper left", fontsize=9)
    return fig


# --- the questions ------------------------------------------------------------------------------
def book_questions() -> list[Question]:
    """The quiz's questions in the order of the chapters (a new list; the questions are frozen)."""
    return list(_book_questions())


@functools.cache
def _book_questions() -> tuple[Question, ...]:
    return (
        # 1 -----------------------------------------------------------------------------------------
        Choice(
            prompt="What does **internal covariate shift** mean in the original batch-normalization paper?",
            options=[
                "The test data come from a different distribution than the training data.",
                "The distribution of a layer's inputs changes during training, because the layers before it "
                "learn.",
                "The running statistics drift away from the batch statistics as the weights change.",
                "Every layer's outputs have a non-zero mean, because ReLU outputs are never negative.",
            ],
            answer=1,
            feedback=[
                "A difference between training and test data is (ordinary) covariate shift; the paper's "
                "term is about the inputs of the layers *inside* the network, while it trains.",
                "",
                "That lag is real (Chapter 4), but it concerns the stored statistics used at inference, not "
                "what a layer receives while the network trains.",
                "A non-zero mean is a property of one distribution; the term is about that distribution "
                "*changing* from step to step.",
            ],
            explanation="Every update of the earlier layers changes what a later layer receives; the paper "
            "called this internal covariate shift and proposed normalizing each layer's inputs against it.",
            chapter="01_internal_covariate_shift",
        ),
        Choice(
            prompt="Chapter 1 compares the batch-normalized network not only with the plain network at "
            "PyTorch's default initialization but also with a plain network given a data-dependent (LSUV) "
            "initialization, which starts every hidden unit with pre-activations of mean 0 and standard "
            "deviation 1. What does the second comparison test?",
            options=[
                "Whether batch norm does more than fix the scale of the signal at the start: the control "
                "fixes that scale once, and batch norm keeps fixing it at every step.",
                "Whether batch norm still helps when the data are standardized before they enter the "
                "network.",
                "Whether batch norm's running statistics are better than statistics computed once at the "
                "start.",
                "Whether the sigmoid units can be replaced by ReLUs without losing accuracy.",
            ],
            answer=0,
            feedback=[
                "",
                "Both networks receive the same standardized digits; the control acts on the hidden layers, "
                "whose pre-activations shrink from layer to layer under the default initialization.",
                "In training both sides work without running statistics: batch norm uses the batch, and the "
                "control has no normalization at all after its initialization.",
                "Every network in the comparison keeps the same sigmoid units; only the normalization and "
                "the starting weights differ.",
            ],
            explanation="The default initialization shrinks the signal from layer to layer, so part of batch "
            "norm's lead over it is only the starting scale. A data-dependent initialization fixes that "
            "scale once, before training; whatever batch norm still gains over it, at each learning rate and "
            "budget, belongs to normalizing at every step. Chapter 1 measures that gain at several learning "
            "rates, each with a stated budget.",
            chapter="01_internal_covariate_shift",
        ),
        # 2 -----------------------------------------------------------------------------------------
        Numeric(
            prompt="A batch holds four values of one feature: 2, 4, 6 and 8. What is the normalized value "
            "$\\hat x$ of the 8 (ignore $\\epsilon$; round to two decimals)?",
            answer=round(normalized_last(), 2),
            tol=0.01,
            hint="Use the batch mean and the **biased** variance (divide by $m$, not $m - 1$).",
            explanation="The batch mean is 5 and the biased variance is 5, so $\\hat x = (8 - 5)/\\sqrt{5} "
            "\\approx 1.34$. The layer uses the biased variance (divide by $m$).",
            chapter="02_batch_statistics",
        ),
        Choice(
            prompt="`BatchNorm2d` receives an input of shape $(N, C, H, W)$. Over which axes does it "
            "compute each mean and variance?",
            options=[
                "Over $N$ only: one statistic per channel and pixel.",
                "Over $N$, $H$ and $W$: one statistic per channel.",
                "Over $C$, $H$ and $W$: one statistic per example.",
                "Over $H$ and $W$: one statistic per example and channel.",
            ],
            answer=1,
            feedback=[
                "A convolution applies the same filter at every position, so batch norm shares one "
                "statistic over all positions of a channel.",
                "",
                "That is layer norm: it never looks at the other examples of the batch.",
                "That is instance norm: each image and channel on its own.",
            ],
            explanation="A convolution applies the same filter at every position, so batch norm pools the "
            "examples and all positions of a channel and keeps one mean and one variance per channel.",
            chapter="02_batch_statistics",
        ),
        Choice(
            prompt="Why does a careful implementation compute the variance as the mean of squared "
            "deviations, rather than as $E[x^2] - E[x]^2$, in float32?",
            options=[
                "Because it is faster: it needs fewer passes over the data.",
                "Because when the mean is large next to the spread, $E[x^2]$ and $E[x]^2$ nearly cancel and "
                "float32 loses most digits, even giving negative variances.",
                "Because $E[x^2] - E[x]^2$ is the unbiased variance, and the layer needs the biased one.",
                "Because autograd cannot differentiate $E[x^2] - E[x]^2$.",
            ],
            answer=1,
            feedback=[
                "It is the other way round: the deviations need the mean first, so it takes an extra pass.",
                "",
                "Both formulas give the biased variance; they differ only in round-off.",
                "Autograd differentiates it without trouble; the problem is its value.",
            ],
            explanation="When the mean is large next to the spread, $E[x^2]$ and $E[x]^2$ are two huge, "
            "nearly equal numbers, each already rounded, and their difference is mostly rounding error: "
            "catastrophic cancellation.",
            chapter="02_batch_statistics",
        ),
        # 3 -----------------------------------------------------------------------------------------
        MultiChoice(
            prompt="Which statements about $\\gamma$ and $\\beta$ are true? Tick all that apply.",
            options=[
                "They are learned by gradient descent, like weights.",
                "If $\\gamma = \\sqrt{\\mathrm{Var}[x] + \\epsilon}$ and $\\beta = \\mathrm{E}[x]$, and the "
                "layer normalizes with these same fixed statistics (as at inference), it returns its input.",
                "Like `running_mean`, they follow an exponential moving average set by the layer's "
                "`momentum` argument.",
                "There is one $\\gamma$ and one $\\beta$ per feature (channel).",
                "In training mode, one fixed $\\gamma$ and $\\beta$ make the layer return its input exactly "
                "for every batch.",
            ],
            answers=[0, 1, 3],
            feedback=[
                "",
                "",
                "The layer's `momentum` only weights the running statistics, which are buffers; $\\gamma$ "
                "and $\\beta$ change only through the optimizer's steps.",
                "",
                "Each batch brings its own mean and variance, so fixed $\\gamma$ and $\\beta$ undo the "
                "normalization only approximately; the miss shrinks like $1/\\sqrt{m}$.",
            ],
            explanation="$\\gamma$ and $\\beta$ are parameters with gradients, one pair per feature, and "
            "with fixed statistics they can recover the identity. In training mode each batch has its own "
            "statistics, so fixed $\\gamma$ and $\\beta$ undo the normalization only approximately, with a "
            "miss that shrinks like $1/\\sqrt{m}$. `momentum` concerns the running statistics alone.",
            chapter="03_scale_and_shift",
        ),
        Choice(
            prompt="The figure shows a sigmoid and where the values of one channel fall after batch norm "
            "(mean $\\pm$ 2 standard deviations) for two values of $\\gamma$, with $\\beta = 0$. Which band "
            "belongs to the larger $\\gamma$?",
            options=[
                "Band A, the narrow one.",
                "Band B, the wide one.",
                "Neither: after batch norm every channel has unit variance, so the bands would be the same.",
            ],
            answer=1,
            feedback=[
                "The output's standard deviation is $|\\gamma|$, so a larger $\\gamma$ spreads the values "
                "wider.",
                "",
                "Unit variance holds for $\\hat x$, before the scale and shift; the output has standard "
                "deviation $|\\gamma|$.",
            ],
            explanation="The output's standard deviation is $|\\gamma|$, so the wide band B is $\\gamma = "
            "3$ and reaches the saturated ends of the sigmoid; band A ($\\gamma = 0.5$) stays where the "
            "sigmoid is nearly linear. Unit variance holds only before the scale and shift.",
            chapter="03_scale_and_shift",
            figure=gamma_figure(),
            figure_alt="A sigmoid curve with a narrow shaded band A from -1 to 1 and a wide hatched band B "
            "from -6 to 6.",
        ),
        # 4 -----------------------------------------------------------------------------------------
        Choice(
            prompt="The figure shows the running mean of one feature under three values of PyTorch's "
            "`momentum` (0.9, 0.1 and 0.01), fed the same batch means (gray dots). Which curve has "
            "`momentum=0.01`?",
            options=["Curve A", "Curve B", "Curve C"],
            answer=2,
            feedback=[
                "Curve A copies almost every batch mean: that is the largest weight on the newest batch, "
                "0.9.",
                "Curve B settles within a few dozen steps: a weight of 0.1 on the newest batch.",
                "",
            ],
            explanation="PyTorch's momentum is the weight of the newest batch. With 0.01 the average has a "
            "long memory: it rises slowly from its initial 0 (curve C) but is smooth. With 0.9 it copies "
            "the last batch (curve A, noisy).",
            chapter="04_training_vs_inference",
            figure=momentum_figure(),
            figure_alt="Three running-mean curves over 150 steps: A jumps with every batch, B rises within "
            "about 30 steps, C rises slowly and is still below the true mean of 2 at the end.",
        ),
        Numeric(
            prompt="What value does this code print for the running variance (two decimals are enough)?",
            code=RUNNING_VAR_SNIPPET,
            answer=round(running_var_after_one(), 2),
            tol=0.01,
            hint="The running variance starts at 1, and the batch enters with its **unbiased** variance.",
            explanation="The running variance starts at 1 and takes 10% of the batch's **unbiased** "
            "variance: $(9 + 1 + 1 + 9)/3 \\approx 6.67$, so $0.9 \\cdot 1 + 0.1 \\cdot 6.67 \\approx 1.57$.",
            chapter="04_training_vs_inference",
        ),
        Choice(
            prompt="A model with batch norm is evaluated without calling `model.eval()`. What is the most "
            "likely symptom?",
            options=[
                "An error as soon as the model is called.",
                "Predictions for an example depend on which other examples are in its batch.",
                "The weights change during evaluation.",
                "Nothing: batch norm behaves the same in both modes.",
            ],
            answer=1,
            feedback=[
                "Only a batch with a single value per channel raises; an ordinary evaluation batch runs "
                "without complaint, which is what makes the mistake easy to miss.",
                "",
                "Without an optimizer step no weight changes; what does change silently are the buffers "
                "`running_mean` and `running_var`.",
                "Training mode normalizes with the batch's statistics, eval mode with the running ones.",
            ],
            explanation="In training mode the layer normalizes with the statistics of the current batch, so "
            "each prediction depends on the batch mates (and the running statistics are updated, too).",
            chapter="04_training_vs_inference",
        ),
        # 5 -----------------------------------------------------------------------------------------
        Numeric(
            prompt="For one feature, let $\\partial L/\\partial x_i$ be the gradient that a batch-norm "
            "layer (in training mode) passes back to its input $x_i$. What is $\\sum_i \\partial "
            "L/\\partial x_i$ over the batch, for any upstream gradient?",
            answer=0.0,
            tol=1e-6,
            hint="Think about what adding the same constant to every input does to the output.",
            explanation="Adding the same constant to every input leaves the output unchanged, so the "
            "gradient has no component along that direction: it sums to zero. This is one of the terms "
            "through which the batch statistics couple the examples.",
            chapter="05_gradient_flow",
        ),
        Choice(
            prompt="In training mode, the output for example $j$ depends on input $i \\ne j$ through the "
            "batch statistics. How does the size of that cross term $\\partial y_j / \\partial x_i$ scale "
            "with the number $m$ of values per statistic?",
            options=["like $1/m$", "like $1/\\sqrt{m}$", "it does not depend on $m$", "like $m$"],
            answer=0,
            feedback=[
                "",
                "$1/\\sqrt{m}$ is how the *noise* of a batch mean falls; each input's share of the mean and "
                "variance is $1/m$.",
                "Each input is one of $m$ values that make up the mean and the variance, so its pull on "
                "them falls as $m$ grows.",
                "The coupling fades with larger batches; it does not grow.",
            ],
            explanation="Each input enters the mean and the variance with weight $1/m$, so every "
            "off-diagonal entry of the Jacobian scales as $1/m$: with large batches the examples barely "
            "interact.",
            chapter="05_gradient_flow",
        ),
        # 6 -----------------------------------------------------------------------------------------
        Choice(
            prompt="Where does the original paper place batch normalization in a block with a linear layer "
            "and a nonlinearity?",
            options=[
                "After the linear layer, before the nonlinearity, and the linear layer's bias is dropped.",
                "After the nonlinearity, with the linear layer's bias kept.",
                "Before the linear layer, on its input $u$, so that $Wu$ is computed from normalized inputs.",
                "After the linear layer and before the nonlinearity, keeping the bias to give each unit an "
                "offset.",
            ],
            answer=0,
            feedback=[
                "",
                "That is the *after* placement, which Chapter 6 also tries; the paper normalizes before the "
                "nonlinearity.",
                "The paper considered normalizing $u$ and chose $Wu + b$ instead, whose distribution is "
                "more symmetric and closer to Gaussian.",
                "The mean subtraction cancels the bias, and $\\beta$ already gives each unit its offset.",
            ],
            explanation="The paper normalizes $Wu + b$ before the nonlinearity and notes that the bias $b$ "
            "can be dropped, because the mean subtraction cancels it and $\\beta$ takes over its role.",
            chapter="06_placement",
        ),
        Choice(
            prompt="A `Linear(64, 32)` with `bias=True` feeds a `BatchNorm1d(32)` in training mode. What "
            "gradient does the Linear layer's bias receive?",
            options=[
                "Exactly zero: the batch mean subtracts the bias again, so the loss does not depend on it.",
                "The same gradient as in a network without batch norm.",
                "The usual gradient divided by the batch standard deviation.",
                "A gradient only in the first step, before the running statistics exist.",
            ],
            answer=0,
            feedback=[
                "",
                "Any change of the bias moves the batch mean by the same amount, and the normalization "
                "removes it.",
                "The bias shifts every value and the mean alike, so it never reaches the output at all.",
                "Training mode uses the batch statistics at every step; the running statistics play no part.",
            ],
            explanation="Adding a constant to every value of a feature moves its batch mean by the same "
            "constant, so the output, and the loss, do not depend on the bias: write `bias=False` (Chapter "
            "6).",
            chapter="06_placement",
        ),
        # 7 -----------------------------------------------------------------------------------------
        Choice(
            prompt="What happens when this code runs?",
            code=SINGLE_EXAMPLE_SNIPPET,
            options=[
                "It returns a prediction computed with the running statistics.",
                "It raises `ValueError: Expected more than 1 value per channel when training`.",
                "It returns NaN, since the variance of one value is 0.",
                "It returns a prediction, but updates no running statistics.",
            ],
            answer=1,
            feedback=[
                "In training mode the layer never uses the running statistics to normalize; only "
                "`model.eval()` switches to them.",
                "",
                "$\\epsilon$ would keep the division finite; PyTorch refuses the batch before that.",
                "A training-mode call always tries to compute batch statistics, and with one value there is "
                "nothing to compute.",
            ],
            explanation="In training mode the layer needs batch statistics, and one example per channel has "
            "no spread, so PyTorch refuses. Call `model.eval()` before predicting on single examples.",
            chapter="07_pytorch_in_practice",
        ),
        Choice(
            prompt="You save only `dict(model.named_parameters())` of a trained batch-norm network and load "
            "it into a fresh copy with `load_state_dict(saved, strict=False)`. What happens in eval mode?",
            options=[
                "It predicts worse: `running_mean` and `running_var` are buffers, not parameters, so the "
                "copy normalizes with its initial 0 and 1.",
                "Nothing: the running statistics are recomputed from the weights on the first eval batch.",
                "Loading raises an error, because the running statistics are missing.",
                "It predicts exactly as before, since $\\gamma$ and $\\beta$ were saved.",
            ],
            answer=0,
            feedback=[
                "",
                "Eval mode reads the stored running statistics; nothing recomputes them unless you "
                "recalibrate.",
                "With `strict=False` the missing buffers are only listed in the returned result, not "
                "raised; they keep their initial values.",
                "$\\gamma$ and $\\beta$ are only half of what eval mode uses; the running mean and variance "
                "are the other half.",
            ],
            explanation="The running statistics are buffers: they are in `state_dict()`, not in "
            "`parameters()`. Save and load the whole `state_dict` (Chapter 7).",
            chapter="07_pytorch_in_practice",
        ),
        # 8 -----------------------------------------------------------------------------------------
        Choice(
            prompt="Chapter 8 finds that batch norm trains over a wider range of learning rates than a plain "
            "network with a data-dependent initialization. It adds a control: a batch-normalized network "
            "whose weights start at the data-dependent initialization's scale instead of PyTorch's small "
            "default. Suppose this control's range starts at the same small learning rate as the plain "
            "network's, but keeps batch norm's top end. What follows?",
            options=[
                "The extension at the small end comes from the starting weight scale; the extension at the "
                "top end belongs to batch norm itself.",
                "Both ends come from batch norm itself, since the control still normalizes at every step.",
                "Both ends come from the starting weight scale, so batch norm adds nothing to the range.",
                "The small end belongs to batch norm, the top end to the weight scale.",
            ],
            answer=0,
            feedback=[
                "",
                "The control normalizes at every step too, yet loses the small end: what it changed, the "
                "starting weight scale, is what carried that end.",
                "The control keeps the top end although its weights start at the plain network's scale, so "
                "the scale cannot be what carries the top end.",
                "It is the other way round: changing only the weight scale moved the small end and left the "
                "top end in place.",
            ],
            explanation="Changing one thing at a time separates the causes: the control differs from batch "
            "norm only in its starting weights, and from the plain network only in its normalization. Small "
            "default weights get large effective steps under batch norm, which helps at small learning "
            "rates; at large ones, normalizing at every step keeps the pre-activations out of the flat "
            "parts of the "
            "sigmoid. Chapter 8 also checks each end with a longer budget, since a range of workable "
            "learning rates depends on how long the network trains.",
            chapter="08_with_and_without",
        ),
        Choice(
            prompt="Batch norm is said to **regularize** through the noise of its batch statistics. Which "
            "comparison in Chapter 8 isolates that noise?",
            options=[
                "The same batch-normalized network trained with batch statistics and with statistics of the "
                "whole training set, on the same seeds.",
                "The batch-normalized network against a plain network with a data-dependent initialization.",
                "The batch-normalized network's training accuracy against its test accuracy.",
                "Batches of 32 against ghost batches of 4.",
            ],
            answer=0,
            feedback=[
                "",
                "That compares everything batch norm does, its effect on optimization included, not the "
                "noise alone.",
                "A gap between training and test accuracy shows overfitting, not what causes it or what "
                "reduces it.",
                "Both sides have batch noise; this asks whether *more* noise helps further, not whether the "
                "noise helps at all.",
            ],
            explanation="With full-set statistics the layer still normalizes at every step, but an example's "
            "output no longer depends on its random batch mates: the one difference is the noise. Chapter 8 "
            "runs this comparison on a small training set, where overfitting is possible, at three learning "
            "rates, and adds ghost batches to ask whether more noise helps more.",
            chapter="08_with_and_without",
        ),
        # 9 -----------------------------------------------------------------------------------------
        MultiChoice(
            prompt="Which of these are limitations of batch normalization? Tick all that apply.",
            options=[
                "Its statistics are noisy when batches are small.",
                "It behaves differently in training and at inference.",
                "In training, one example's output depends on the other examples in its batch.",
                "Its running statistics adapt on their own when the test inputs are shifted.",
            ],
            answers=[0, 1, 2],
            feedback=[
                "",
                "",
                "",
                "That would be a strength, and it is false: the running statistics describe the training "
                "data until you recalibrate them on the shifted data.",
            ],
            explanation="Batch size, the train/inference gap and the coupling of examples are the classic "
            "limitations. Under a shift of the test inputs the running statistics mislead the network, "
            "which is why Chapter 9 recalibrates them.",
            chapter="09_limitations",
        ),
        Numeric(
            prompt="The second convolution of Chapter 9's small CNN produces feature maps of 4×4 positions. "
            "With 2 images in a batch, how many values does each of its batch-norm statistics pool?",
            answer=32,
            tol=0.5,
            hint="A convolutional batch norm pools every image of the batch and every position of the "
            "channel.",
            explanation="$2 \\times 4 \\times 4 = 32$ values per channel. A 7×7 layer of ResNet-50 pools $2 "
            "\\times 7 \\times 7 = 98$ at the same batch, more than this CNN does, yet ResNet-50 is the one "
            "whose error rose at small batches (Wu and He). So the count of values alone cannot explain the "
            "difference; Chapter 9's control with one statistic per position shows that pooling spares the "
            "degenerate collapse to $\\pm 1$ at $m = 2$, and no more.",
            chapter="09_limitations",
        ),
        # 10 ----------------------------------------------------------------------------------------
        Numeric(
            prompt="A channel has a batch variance of $10^{-5}$, and `eps` is $10^{-5}$ too. By what factor "
            "does batch norm scale the channel's spread relative to unit variance (two decimals)?",
            answer=round(eps_shrink(), 2),
            tol=0.01,
            hint="The spread after normalizing is $\\sigma_\\mathcal{B}/\\sqrt{\\sigma^2_\\mathcal{B} + "
            "\\epsilon}$.",
            explanation="The spread after normalizing is "
            "$\\sigma_\\mathcal{B}/\\sqrt{\\sigma^2_\\mathcal{B} + \\epsilon} = \\sqrt{1/2} \\approx 0.71$: "
            "a variance comparable to `eps` is not fully standardized.",
            chapter="10_key_parameters",
        ),
        Numeric(
            prompt="A Keras model uses `BatchNormalization(momentum=0.99)`. Which `momentum` gives the same "
            "running averages in `torch.nn.BatchNorm1d`?",
            answer=0.01,
            tol=1e-6,
            hint="Keras's momentum weights the old value, PyTorch's the new batch.",
            explanation="Keras's momentum weights the old value, PyTorch's the new batch: "
            "$\\alpha_\\text{torch} = 1 - \\lambda_\\text{keras} = 0.01$.",
            chapter="10_key_parameters",
        ),
        Choice(
            prompt="`torch.nn.BatchNorm1d(64, track_running_stats=False)` is put in eval mode. Which "
            "statistics does it normalize with?",
            options=[
                "The running statistics it collected in training.",
                "The statistics of the current batch, as in training.",
                "Mean 0 and variance 1: it does not normalize in eval mode.",
            ],
            answer=1,
            feedback=[
                "With `track_running_stats=False` it collected none: `running_mean` and `running_var` are "
                "None.",
                "",
                "It still normalizes; there are just no stored statistics to do it with.",
            ],
            explanation="Without running statistics there is nothing stored to use, so eval mode falls back "
            "on the batch's own statistics, and a single example cannot be normalized.",
            chapter="10_key_parameters",
        ),
        Choice(
            prompt="Why initialize $\\gamma$ of the last batch norm in each residual branch to 0?",
            options=[
                "So that each residual block starts out as the identity, which helps very deep networks "
                "train.",
                "So that the branch never contributes: with $\\gamma = 0$ its gradient is 0 and it stays 0.",
                "To keep that layer's running statistics from being updated early in training.",
                "To cancel the bias of the convolution in front of the batch norm.",
            ],
            answer=0,
            feedback=[
                "",
                "$\\partial L/\\partial\\gamma = \\sum_i g_i \\hat x_i$ does not vanish at $\\gamma = 0$, "
                "so $\\gamma$ grows and the branch starts contributing.",
                "The running statistics are updated in every training step whatever $\\gamma$ is.",
                "The mean subtraction cancels that bias whatever $\\gamma$ is.",
            ],
            explanation="With $\\gamma = 0$ the branch outputs $\\beta = 0$ and the block computes $x + 0$; "
            "Goyal et al. (2017) used this to train ResNet-50 with very large batches.",
            chapter="10_key_parameters",
        ),
        # 11 ----------------------------------------------------------------------------------------
        Choice(
            prompt="Which line describes a batch-norm layer at inference, after `model.eval()`?",
            options=[
                "A fixed per-feature affine map, $y = s\\,x + t$, with $s$ and $t$ computed from $\\gamma$, "
                "$\\beta$ and the running statistics.",
                "Standardization with the statistics of the current batch, then $\\gamma$ and $\\beta$.",
                "The identity, because $\\gamma$ and $\\beta$ learn to undo the normalization.",
                "Standardization with the mean and variance of each example on its own.",
            ],
            answer=0,
            feedback=[
                "",
                "That is training mode; in eval mode no statistic depends on the batch.",
                "They can, but in general they do not: $\\gamma$ and $\\beta$ learn whatever scale and "
                "shift help the next layer.",
                "That is layer or instance norm, whose statistics depend on each input.",
            ],
            explanation="With the running statistics fixed, $y = \\gamma (x - "
            "\\hat\\mu)/\\sqrt{\\hat\\sigma^2 + \\epsilon} + \\beta$ is a per-feature scale and shift, "
            "which is also why it can be folded into the layer before it.",
            chapter="15_at_inference",
        ),
        # 12 ----------------------------------------------------------------------------------------
        Choice(
            prompt="Santurkar et al. (2018) added random, changing noise right after every "
            "batch-normalization layer, which brings back a strong shift of each layer's input "
            "distribution. What did they find?",
            options=[
                "The networks no longer trained, confirming internal covariate shift as the cause.",
                "The networks trained about as well as ordinary batch-normalized ones.",
                "The noise improved the test accuracy by a large margin.",
                "The network learned to cancel the noise, so the layers' inputs stayed stable.",
            ],
            answer=1,
            feedback=[
                "The noisy networks trained fine, which is exactly why the finding questioned the original "
                "explanation.",
                "",
                "In the paper the noisy networks matched ordinary batch norm's accuracy; they did not beat "
                "it.",
                "The noise is redrawn at every step, so nothing can cancel it: the measured input moments "
                "jumped at every step.",
            ],
            explanation="They trained about as well, so removing the shift is not what makes batch "
            "normalization work, at least not alone; the authors point to a smoother loss landscape "
            "instead. Chapter 12 repeats the experiment in miniature.",
            chapter="12_why_it_works",
        ),
        Choice(
            prompt="A Linear layer without bias is followed by batch norm (training mode). You multiply its "
            "weight matrix by 2. What happens to the layer's output and to the gradient with respect to the "
            "weights?",
            options=[
                "The output is unchanged and the gradient halves.",
                "The output doubles and the gradient is unchanged.",
                "The output is unchanged and so is the gradient.",
                "The output is unchanged and the gradient doubles.",
            ],
            answer=0,
            feedback=[
                "",
                "The batch mean and standard deviation double too, so the normalization cancels the factor.",
                "The loss is the same function of $2W$ as of $W$, so by the chain rule its gradient at $2W$ "
                "is half the one at $W$.",
                "Scale invariance makes the gradient shrink as the weights grow, not grow.",
            ],
            explanation="The layer is scale invariant, $L(aW) = L(W)$, so $\\nabla L(aW) = \\nabla L(W)/a$: "
            "the gradient is orthogonal to $W$ and the effective learning rate is $\\eta/\\lVert "
            "W\\rVert^2$.",
            chapter="12_why_it_works",
        ),
        Choice(
            prompt="What does weight decay do to the weights of a Linear layer that is followed by batch "
            "norm?",
            options=[
                "It keeps their norm small, and so keeps the effective learning rate $\\eta/\\lVert "
                "W\\rVert^2$ from falling as plain SGD grows the weights.",
                "It makes the function the network computes simpler, as it does without batch norm.",
                "Nothing at all, since the layer's output does not depend on their scale.",
                "It makes the gradient orthogonal to the weights.",
            ],
            answer=0,
            feedback=[
                "",
                "The function does not depend on these weights' scale, so shrinking them cannot simplify it.",
                "The output ignores the scale, but the optimizer does not: the scale sets the step size.",
                "Scale invariance alone already does that, with or without weight decay.",
            ],
            explanation="For scale-invariant weights, weight decay is a knob on the effective learning rate "
            "rather than a regularizer of the function (Chapter 12).",
            chapter="12_why_it_works",
        ),
        # 13 ----------------------------------------------------------------------------------------
        Numeric(
            prompt="A fully connected batch-norm layer trains on batches of 2. Ignoring $\\epsilon$, what "
            "is $|\\hat x|$ for each of the two examples, for any two different input values?",
            answer=1.0,
            tol=1e-6,
            hint="Two values sit at the same distance from their mean, and that distance is their biased "
            "standard deviation.",
            explanation="With two values $a \\ne b$ the mean is $(a+b)/2$ and the biased standard deviation "
            "$|a-b|/2$, so $\\hat x = \\pm 1$ whatever the inputs: in training the layer passes on only "
            "which of the two is larger.",
            chapter="13_small_batches",
        ),
        Choice(
            prompt="How does batch renormalization treat its corrections $r$ and $d$ in the backward pass?",
            options=[
                "As constants: no gradient flows through them, so the gradient is batch norm's, scaled by "
                "$r$.",
                "Like $\\mu_\\mathcal{B}$ and $\\sigma_\\mathcal{B}$: the gradient flows through them.",
                "As learned parameters, updated by the optimizer like $\\gamma$ and $\\beta$.",
                "They are used only at inference, so the backward pass never sees them.",
            ],
            answer=0,
            feedback=[
                "",
                "When nothing is clipped, the output equals $(x - \\hat\\mu)/\\hat\\sigma$ scaled and "
                "shifted, so a gradient through $r$ and $d$ would be that of a fixed affine map and would "
                "lose the "
                "batch-statistic terms of batch norm's gradient; the method stops it there on purpose.",
                "$r$ and $d$ are computed from the batch and the running statistics at every step; nothing "
                "about them is learned.",
                "They act in training; at inference batch renorm is ordinary batch norm with running "
                "statistics.",
            ],
            explanation="$r = \\sigma_\\mathcal{B}/\\hat\\sigma$ and $d = (\\mu_\\mathcal{B} - "
            "\\hat\\mu)/\\hat\\sigma$ make the training output equal to the inference output as long as "
            "neither is clipped; clipped to $[1/r_{max}, r_{max}]$ and $[-d_{max}, d_{max}]$, they only "
            "pull the two closer. Either way they enter the gradient as constants.",
            chapter="13_small_batches",
        ),
        Choice(
            prompt="You fine-tune a pretrained network whose batch-norm layers follow fully connected "
            "layers, on new data whose inputs are shifted, and memory allows only 2 examples per batch. "
            "What does "
            "Chapter 13 recommend for the batch-norm layers?",
            options=[
                "Re-estimate their running statistics on the new inputs, then keep them in eval mode "
                "(frozen) while the weights, $\\gamma$ and $\\beta$ learn.",
                "Leave them in training mode at the usual learning rate, so the statistics follow the new "
                "data.",
                "Remove them, and let the following layers adapt.",
                "Leave them in training mode with `momentum=1.0`, so the running statistics always hold the "
                "latest batch.",
            ],
            answer=0,
            feedback=[
                "",
                "With 2 values per statistic, a fully connected batch norm maps every feature to $\\pm 1$ in "
                "training: the layers learn from the sign of a difference between two examples, and the "
                "pretrained statistics are thrown away.",
                "The layers after them were trained on normalized inputs; removing the normalization "
                "changes what they receive.",
                "Then the running statistics describe just the last pair of examples, the noisiest estimate "
                "possible, and training still sees the $\\pm 1$ collapse.",
            ],
            explanation="Frozen batch norm normalizes with fixed statistics, so the batch size no longer "
            "matters and the layer becomes a learnable per-feature affine map. Re-estimating those "
            "statistics on the "
            "new inputs first (a pass in training mode without optimizer steps) adapts them to the shift; "
            "Chapter 13 measures how much that adds and how much fine-tuning adds on top.",
            chapter="13_small_batches",
        ),
        # 14 ----------------------------------------------------------------------------------------
        Numeric(
            prompt="A global batch of 256 is split evenly over 8 processes. How many times larger is the "
            "standard error of a feature's batch mean with per-process statistics than with synchronized "
            "ones (two decimals)?",
            answer=round(per_process_noise_ratio(), 2),
            tol=0.01,
            hint="A mean of $n$ values has a standard error of $\\sigma/\\sqrt{n}$.",
            explanation="Per process the mean uses $256/8 = 32$ values, synchronized all 256: the ratio is "
            "$\\sqrt{256/32} = \\sqrt 8 \\approx 2.83$.",
            chapter="14_across_processes",
        ),
        MultiChoice(
            prompt="With 32 images per GPU, why might someone keep per-process batch norm even though "
            "`SyncBatchNorm` is available? Tick all that apply.",
            options=[
                "Synchronization adds blocking messages to every batch-norm layer in every step.",
                "Per-process statistics keep the noise of the statistics, and its mild regularization, the "
                "same however many GPUs are added.",
                "Per-process statistics are more accurate than synchronized ones.",
                "`SyncBatchNorm` cannot be combined with `DistributedDataParallel`.",
            ],
            answers=[0, 1],
            feedback=[
                "",
                "",
                "Synchronized statistics use more values, so they are the more accurate estimate.",
                "`SyncBatchNorm` is made for `DistributedDataParallel`: convert the model, then wrap it.",
            ],
            explanation="With 32 images per GPU the per-process statistics are already good estimates; "
            "synchronizing costs latency in every layer and step, and changes the regularizing noise when "
            "the number of GPUs changes.",
            chapter="14_across_processes",
        ),
        # 15 ----------------------------------------------------------------------------------------
        Numeric(
            prompt="A `Linear` layer with bias $b = 0.5$ (one output) feeds a batch norm in eval mode with "
            "$\\gamma = 2$, $\\beta = 1$, running mean 3, running variance 3 and $\\epsilon = 1$. What is "
            "the bias $b'$ of the folded layer?",
            answer=round(folded_bias(), 6),
            tol=0.01,
            hint="$s = \\gamma/\\sqrt{\\hat\\sigma^2 + \\epsilon}$ and $b' = s\\,(b - \\hat\\mu) + \\beta$.",
            explanation="$s = 2/\\sqrt{3 + 1} = 1$, so $b' = 1 \\cdot (0.5 - 3) + 1 = -1.5$.",
            chapter="15_at_inference",
        ),
        Choice(
            prompt="In which of these can the batch norm be folded into the layer before it?",
            options=[
                "`Conv2d → BatchNorm2d → ReLU`, in eval mode.",
                "`Linear → ReLU → BatchNorm1d`, in eval mode.",
                "`Conv2d → BatchNorm2d → ReLU`, in training mode.",
                "`Linear → LayerNorm`, in eval mode.",
            ],
            answer=0,
            feedback=[
                "",
                "The ReLU sits between the two; the batch norm could only be folded into the layer *after* "
                "it.",
                "In training mode the statistics change with every batch, so there is no fixed map to fold.",
                "Layer norm's statistics depend on each input, so it costs the same at inference as in "
                "training and cannot be folded.",
            ],
            explanation="Folding needs a fixed affine map (eval mode, running statistics) directly after a "
            "linear layer or convolution whose output feeds only the batch norm. That removes batch norm's "
            "cost at inference; in training it remains.",
            chapter="15_at_inference",
        ),
        # 16 ----------------------------------------------------------------------------------------
        Choice(
            prompt="Why does batch norm take a larger share of the running time than its share of the "
            "arithmetic suggests, especially on a GPU?",
            options=[
                "It does little arithmetic per value but reads and writes every activation several times, "
                "so memory traffic sets its speed.",
                "The square root and the division are slow instructions that dominate its time.",
                "It needs a matrix product per channel to compute the statistics.",
                "It has to wait for the running statistics to be synchronized with the other layers.",
            ],
            answer=0,
            feedback=[
                "",
                "There is one square root per channel, not per value; the per-value work is a few adds and "
                "multiplies.",
                "The statistics are sums over the batch, not matrix products.",
                "The running statistics are a layer's own buffers; nothing waits for other layers.",
            ],
            explanation="A streaming training step needs at least six reads and two writes of a tensor the "
            "size of the input, which makes batch norm memory-bound; fusing the passes is how fast kernels "
            "save time.",
            chapter="16_making_it_fast",
        ),
    )


def book_quiz() -> Quiz:
    """The quiz of Chapter 11: at least one question per chapter, 1 to 16 (11 itself excepted)."""
    return Quiz(book_questions(), name=QUIZ_NAME, title="Batch normalization quiz")
