"""The one statistical rule behind every verdict of the paper folder (lvae/report/verdicts.py), and its words.

A claim "b is better than a" rests on the difference b - a of one quantity:
- with n >= 2 seeds, the seeds' paired differences (each seed's b against the same seed's a): their mean
  against its standard error over the seeds, times the two-sided 95 % t value for n - 1 degrees of freedom
  (4.30 for 3 seeds, 12.71 for 2);
- with one seed, the difference paired image by image on the same test images against its standard error
  over the images (the t value for images - 1 degrees of freedom, about 1.96): the training noise between
  seeds is not in that error.
Counts (active units, curve points) take the same test over seeds; with one seed they have no standard
error and are "descriptive": shown, with no verdict word.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional

from scipy.stats import t as student_t

SUPPORTED = "supported"  # the difference is above zero by more than t standard errors
NOT_SUPPORTED = "not supported"  # measured, within t standard errors of zero
CONTRADICTED = "contradicted"  # measured, below zero by more than t standard errors: the opposite shown
NOT_RUN = "not run"  # the runs it needs are missing (the verdict names them and the command that makes them)
NOT_TESTABLE = "not testable at this budget"  # the budget itself prevents it (e.g. too few training curve points)
DESCRIPTIVE = "descriptive"  # a number with no standard error: shown, never a verdict word of a claim
MEASURED = (CONTRADICTED, NOT_SUPPORTED, SUPPORTED)  # least favourable first
MISSING = (NOT_RUN, NOT_TESTABLE)
CONFIDENCE = 0.95

RULE = ("**The rule of every verdict.** A claim that b is better than a is judged on the difference b - a: with "
        "n >= 2 seeds, the mean of the seeds' paired differences against its standard error over the seeds, times "
        "the two-sided 95 % t value for n - 1 degrees of freedom (4.30 for 3 seeds); with one seed, the difference "
        "paired image by image on the same test images against its standard error over the images (t about 1.96), "
        "which leaves out the training noise between seeds. *Supported*: above zero by more than t standard "
        "errors; *contradicted*: below zero by more than that; *not supported*: within it. *Not run*: the runs it "
        "needs are missing (named, with the command that makes them); *not testable at this budget*: the budget "
        "itself prevents it. Counts (active units, curve points) take the same test over seeds, and with one seed "
        "are *descriptive* (no verdict word). A claim of several parts lists each part with its word; its headline "
        "is the least favourable word of its measured parts (a missing part never hides a measured one), and when "
        "every measured part is supported, the word of a missing part (what never ran is not shown); when the "
        "only measured parts are descriptive, *descriptive*.")


def t_critical(degrees_of_freedom: int) -> float:
    """The two-sided 95 % critical value of Student's t for `degrees_of_freedom` (>= 1): 4.30 for 2."""
    return float(student_t.ppf(0.5 + CONFIDENCE / 2, degrees_of_freedom))


@dataclass
class Difference:
    """b - a of one quantity, with its standard error, the degrees of freedom of that error, and its basis."""

    value: float
    stderr: float
    degrees_of_freedom: int  # seeds - 1 over seeds; images - 1 paired over images
    basis: str  # "paired over 10,000 test images, 1 seed", ...

    @property
    def threshold(self) -> float:
        """How far from zero the difference must be to count: t_critical(df) standard errors."""
        return t_critical(self.degrees_of_freedom) * self.stderr


def format_count(value: float) -> str:
    """A count, or a mean of counts: an integer when it is one, else one decimal ("35", "35.3")."""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def over_seeds(values: list[float], counts: bool = False) -> Optional[Difference]:
    """The mean of n >= 2 seeds' paired differences and its standard error over the seeds; None for fewer.
    counts: the differences are of counts (listed as integers)."""
    n = len(values)
    if n < 2:
        return None
    listed = ", ".join(f"{'+' if v >= 0 else '-'}{format_count(abs(v))}" if counts else f"{v:+.2f}" for v in values)
    return Difference(statistics.fmean(values), statistics.stdev(values) / math.sqrt(n), n - 1,
                      f"mean of {n} seeds' paired differences ({listed}) ± its standard error over the seeds")


def over_images(value: float, stderr: float, images: int) -> Difference:
    """One seed's difference, paired image by image on `images` test images, and its standard error over them."""
    return Difference(value, stderr, images - 1, f"paired over {images:,} test images, 1 seed")


@dataclass
class Verdict:
    word: str  # one of MEASURED, MISSING, or DESCRIPTIVE
    because: str  # the numbers it rests on, or what is missing and the command that makes it
    parts: tuple["Verdict", ...] = ()  # a claim made of several parts: each part's verdict

    def summary(self) -> str:
        """The word, and for a claim of parts how many parts have each word:
        "not supported (1 not supported, 2 not run)"."""
        if not self.parts:
            return self.word
        counts = {word: sum(part.word == word for part in self.parts) for word in (*reversed(MEASURED), *MISSING,
                                                                                    DESCRIPTIVE)}
        return f"{self.word} ({', '.join(f'{n} {word}' for word, n in counts.items() if n)})"

    def markdown(self) -> str:
        if not self.parts:
            return f"**Verdict: {self.word}**: {self.because}"
        return "\n".join([f"**Verdict: {self.summary()}**{self.because}", "",
                          *(f"- {part.word}: {part.because}" for part in self.parts)])


def better_verdict(d: Optional[Difference], what: str, missing: Optional[Verdict] = None,
                   unit: str = "nats") -> Verdict:
    """`what` (b better than a) from the difference b - a under the rule; `missing` when there is no difference."""
    if d is None:
        return missing or Verdict(NOT_RUN, f"{what}: the runs are missing, unfinished, or scored other test images")
    text = (f"{what}: {d.value:+.2f} ± {d.stderr:.2f} {unit} ({d.basis}); t = {t_critical(d.degrees_of_freedom):.2f} "
            f"for {d.degrees_of_freedom:,} degree{'' if d.degrees_of_freedom == 1 else 's'} of freedom")
    if d.value > d.threshold:
        return Verdict(SUPPORTED, text)
    if d.value < -d.threshold:
        return Verdict(CONTRADICTED, f"{text}: the opposite, by more than t standard errors")
    return Verdict(NOT_SUPPORTED, f"{text}: within t standard errors of zero")


def all_of(verdicts: list[Verdict]) -> Verdict:
    """One verdict for a claim made of parts: the least favourable word of the measured parts; when every
    measured part is supported but a part is missing, the missing part's word (not run before not testable).
    A descriptive part gives no word, but it was measured: when the only measured parts are descriptive, the
    headline is "descriptive", never the word of a missing part, which would hide them."""
    words = [v.word for v in verdicts]
    measured = [w for w in MEASURED if w in words]
    missing = [w for w in MISSING if w in words]
    if measured and measured[0] != SUPPORTED:
        word = measured[0]
    elif measured:
        word = missing[0] if missing else SUPPORTED
    else:
        word = missing[0] if missing and DESCRIPTIVE not in words else DESCRIPTIVE
    return Verdict(word, f": {len(verdicts)} parts, combined by the rule above", tuple(verdicts))
