"""PII detection benchmark: our RE2 detector against presidio-analyzer, same corpus, same run.

Run from the repository root (details in bench/README.md)::

    .venv/bin/python bench/pii.py [--megabytes 10] [--seed 1] [--presidio-seconds 60] [--json]

1. Generates a deterministic corpus of about ``--megabytes`` MB: lines of filler text with
   decoys that look like PII but are not (dates, times, versions, order numbers, 16-digit
   numbers failing Luhn, invalid IPv4) and, on most lines, one planted value of a known type
   at a known character span (the truth).
2. Times ``PiiEngine.find`` on the whole corpus (one call) and scores its findings, then on
   three worst-case megabytes (``WORST_CASES``).
3. Runs presidio-analyzer in ``.venv-tools`` as a subprocess: ``NoOpNlpEngine`` (no model,
   nothing downloaded), the predefined pattern recognizers for the same types added by hand,
   the public-suffix list taken from tldextract's bundled snapshot (no network). It analyzes
   the corpus in chunks of lines until ``--presidio-seconds`` have passed, so its numbers may
   cover a prefix of the corpus: both tools are scored on that same prefix.

Scoring: a finding is true when a planted value of the same type overlaps it, false
otherwise; a planted value no finding of its type overlaps is missed. Presidio is scored on
every result and on results with score >= 0.5. Rates are MB (10^6 bytes of UTF-8) per second
of wall time around the detection call(s) only.

Exit status: 0, or 1 when the presidio subprocess failed (its stderr is printed).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from themisdb.pii import DEFAULT_PATTERNS, PiiEngine

REPO = Path(__file__).resolve().parent.parent
TOOLS_PYTHON = REPO / ".venv-tools" / "bin" / "python"
PRESIDIO_TYPES = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN",
    "US_SSN": "SSN",
    "IP_ADDRESS": "IP_ADDRESS",
    "URL": "URL",
    "UK_NINO": "UK_NINO",
    "DE_TAX_ID": "DE_TAX_ID",
}

# --- corpus ----------------------------------------------------------------------------------

WORDS = (  # noqa: SIM905 - one readable line of filler words
    "the order was shipped to customer account balance invoice payment received reference "
    "please confirm ticket status update meeting notes server restarted after deploy latency "
    "within limits report attached review pending approved rejected für straße Grüße naïve"
).split()


def luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def card(rng: random.Random) -> str:
    body = rng.choice("45") + "".join(rng.choice("0123456789") for _ in range(14))
    number = body + luhn_digit(body)
    return " ".join(number[i : i + 4] for i in range(0, 16, 4)) if rng.random() < 0.5 else number


def bad_card(rng: random.Random) -> str:
    body = rng.choice("45") + "".join(rng.choice("0123456789") for _ in range(14))
    return body + str((int(luhn_digit(body)) + rng.randint(1, 9)) % 10)


BBAN = {"DE": "n" * 18, "GB": "aaaa" + "n" * 14, "FR": "n" * 23, "NL": "aaaa" + "n" * 10}


def iban(rng: random.Random) -> str:
    country = rng.choice(sorted(BBAN))
    bban = "".join(
        rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ" if k == "a" else "0123456789")
        for k in BBAN[country]
    )
    number = int("".join(str(int(ch, 36)) for ch in bban + country + "00"))
    value = f"{country}{98 - number % 97:02d}{bban}"
    return " ".join(value[i : i + 4] for i in range(0, len(value), 4))


def ssn(rng: random.Random) -> str:
    area = rng.choice([n for n in range(1, 900) if n != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def phone(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    return rng.choice(
        [
            f"+49 30 {rng.randint(1, 9)}{d(7)}",
            f"+1 {rng.randint(2, 9)}{d(2)} {rng.randint(2, 9)}{d(2)} {d(4)}",
            f"({rng.randint(2, 9)}{d(2)}) {rng.randint(2, 9)}{d(2)}-{d(4)}",
            f"+44 20 {rng.randint(7, 8)}{d(3)} {d(4)}",
        ]
    )


def ip(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return "2001:db8:" + ":".join(f"{rng.randint(1, 0xFFFF):x}" for _ in range(6))
    return ".".join(str(n) for n in [rng.randint(1, 223)] + [rng.randint(0, 255) for _ in "xyz"])


def nino(rng: random.Random) -> str:
    first, second = rng.choice("ABCEGHJKLMNPRSTWXYZ"), rng.choice("ABCEGHJKLMNPRSTWXYZ")
    while first + second in {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}:
        second = rng.choice("ACEHJLMPRSW")
    digits = f"{rng.randint(0, 999999):06d}"
    return f"{first}{second} {digits[:2]} {digits[2:4]} {digits[4:]} {rng.choice('ABCD')}"


def de_tax_id(rng: random.Random) -> str:
    digits = rng.sample("0123456789", 9)
    while digits[0] == "0":
        rng.shuffle(digits)
    body = [*digits, rng.choice(digits[1:])]
    body = body[:1] + rng.sample(body[1:], 9)
    text = "".join(body)
    if text[0] == "0" or any(text[i] == text[i + 1] == text[i + 2] for i in range(8)):
        return de_tax_id(rng)
    product = 10
    for ch in text:
        product = (((int(ch) + product) % 10 or 10) * 2) % 11
    return text + str((11 - product) % 10)


def email(rng: random.Random) -> str:
    name = rng.choice(["jane", "john", "anna", "jürgen", "li", "o.brien"])
    domain = rng.choice(["example", "mail", "corp"])
    return f"{name}.{rng.randint(1, 9999)}@{domain}.{rng.choice(['com', 'de', 'co.uk'])}"


def url(rng: random.Random) -> str:
    host = f"www.example-{rng.randint(1, 999)}.com"
    return f"https://{host}/users/{rng.randint(1, 10**6)}?ref=x{rng.randint(1, 99)}"


GENERATORS = {
    "EMAIL": email,
    "PHONE": phone,
    "CREDIT_CARD": card,
    "IBAN": iban,
    "SSN": ssn,
    "IP_ADDRESS": ip,
    "URL": url,
    "UK_NINO": nino,
    "DE_TAX_ID": de_tax_id,
}


def decoy(rng: random.Random) -> str:
    return rng.choice(
        [
            f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.{rng.randint(2000, 2030)}",
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
            f"v{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 99)}",
            f"order #{rng.randint(10**7, 10**8 - 1)}",
            f"invoice {bad_card(rng)}",
            f"EUR {rng.randint(1, 999)}.{rng.randint(100, 999)},{rng.randint(10, 99)}",
            f"host 300.{rng.randint(0, 255)}.{rng.randint(0, 255)}.1",
            f"sha {rng.getrandbits(64):016x}",
        ]
    )


@dataclass
class Corpus:
    text: str
    truth: list[tuple[str, int, int]]  # (type, start, end), character offsets


def make_corpus(megabytes: float, seed: int) -> Corpus:
    rng = random.Random(seed)
    parts: list[str] = []
    truth: list[tuple[str, int, int]] = []
    chars = size = 0
    target = int(megabytes * 1_000_000)
    kinds = sorted(GENERATORS)
    while size < target:
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
        line = f"{words} {decoy(rng)} {rng.choice(WORDS)}"
        if rng.random() < 0.7:
            kind = rng.choice(kinds)
            value = GENERATORS[kind](rng)
            prefix = f"{line}: "
            truth.append((kind, chars + len(prefix), chars + len(prefix) + len(value)))
            line = f"{prefix}{value} {rng.choice(WORDS)}."
        line += "\n"
        parts.append(line)
        chars += len(line)
        size += len(line.encode("utf-8"))
    return Corpus("".join(parts), truth)


# --- scoring ---------------------------------------------------------------------------------


@dataclass
class Score:
    true: int = 0
    false: int = 0
    missed: int = 0
    false_by_type: Counter[str] = field(default_factory=Counter)
    missed_by_type: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "true": self.true,
            "false": self.false,
            "missed": self.missed,
            "false_by_type": dict(sorted(self.false_by_type.items())),
            "missed_by_type": dict(sorted(self.missed_by_type.items())),
        }


def score(findings: Iterable[tuple[str, int, int]], truth: Sequence[tuple[str, int, int]]) -> Score:
    """Truth spans never overlap each other, so a sorted sweep finds the overlaps."""
    by_start = sorted(truth, key=lambda t: t[1])
    starts = [t[1] for t in by_start]
    hit = [False] * len(by_start)
    result = Score()
    for kind, start, end in findings:
        i = bisect.bisect_right(starts, end - 1) - 1
        matched = False
        while i >= 0 and by_start[i][2] > start:
            if by_start[i][0] == kind:
                matched = hit[i] = True
            i -= 1
        if matched:
            result.true += 1
        else:
            result.false += 1
            result.false_by_type[kind] += 1
    for (kind, _, _), was_hit in zip(by_start, hit, strict=True):
        if not was_hit:
            result.missed += 1
            result.missed_by_type[kind] += 1
    return result


# --- presidio --------------------------------------------------------------------------------

PRESIDIO_WORKER = r"""
import json, sys, time
import tldextract.tldextract as tx
tx.TLD_EXTRACTOR = tx.TLDExtract(suffix_list_urls=())  # bundled snapshot: no network
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import NoOpNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer, DeTaxIdRecognizer, EmailRecognizer, IbanRecognizer, IpRecognizer,
    PhoneRecognizer, UkNinoRecognizer, UrlRecognizer, UsSsnRecognizer,
)
from importlib.metadata import version

path, budget = sys.argv[1], float(sys.argv[2])
registry = RecognizerRegistry(supported_languages=["en"])
for recognizer in (
    CreditCardRecognizer(), EmailRecognizer(), IbanRecognizer(), IpRecognizer(),
    PhoneRecognizer(), UkNinoRecognizer(), UrlRecognizer(), UsSsnRecognizer(),
    DeTaxIdRecognizer(supported_language="en"),
):
    registry.add_recognizer(recognizer)
analyzer = AnalyzerEngine(
    nlp_engine=NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "noop"}]),
    registry=registry, supported_languages=["en"],
)
text = open(path, encoding="utf-8").read()
lines = text.splitlines(keepends=True)
analyzer.analyze("warm up jane@example.com", language="en")
results, offset, done, elapsed = [], 0, 0, 0.0
while done < len(lines) and elapsed < budget:
    chunk = "".join(lines[done : done + 500])
    started = time.perf_counter()
    found = analyzer.analyze(chunk, language="en")
    elapsed += time.perf_counter() - started
    results += [[r.entity_type, offset + r.start, offset + r.end, r.score] for r in found]
    offset += len(chunk)
    done += 500
print(json.dumps({
    "version": version("presidio-analyzer"), "chars": offset, "seconds": elapsed,
    "bytes": len(text[:offset].encode("utf-8")), "results": results,
}))
"""


def run_presidio(corpus_path: Path, seconds: float) -> dict[str, Any]:
    if not TOOLS_PYTHON.exists():
        return {"error": f"{TOOLS_PYTHON} missing: pip install -r requirements-tools.in there"}
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as worker:
        worker.write(PRESIDIO_WORKER)
    try:
        done = subprocess.run(  # noqa: S603 (our own interpreter and script)
            [str(TOOLS_PYTHON), worker.name, str(corpus_path), str(seconds)],
            capture_output=True,
            text=True,
            timeout=seconds * 3 + 120,
            check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("THEMIS_")},
        )
    finally:
        os.unlink(worker.name)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- main ------------------------------------------------------------------------------------


def mb_per_s(size: int, seconds: float) -> float | None:
    return round(size / 1e6 / seconds, 2) if seconds else None


# Worst cases for the detector, 1 MB each: no candidate, a rejected candidate every 17
# characters (the most work per byte), a valid finding every 7 (tests/unit/test_pii.py counts
# the RE2 calls these take; here they are timed).
WORST_CASES = {
    "colons": ":" * 1_000_000,
    "rejected cards": "4111111111111112 " * (1_000_000 // 17),
    "dense emails": "a@b.co " * (1_000_000 // 7),
}


def time_worst_cases(engine: PiiEngine) -> dict[str, float]:
    """Seconds per worst-case megabyte (median of 3)."""
    seconds = {}
    for name, text in WORST_CASES.items():
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            engine.find(text)
            runs.append(time.perf_counter() - started)
        seconds[name] = round(sorted(runs)[1], 3)
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--megabytes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--presidio-seconds", type=float, default=60.0)
    parser.add_argument("--patterns", default=str(DEFAULT_PATTERNS))
    parser.add_argument("--json", action="store_true", help="one JSON object with every number")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    corpus = make_corpus(args.megabytes, args.seed)
    generated = time.perf_counter() - started
    total_bytes = len(corpus.text.encode("utf-8"))
    engine = PiiEngine.load(args.patterns)

    started = time.perf_counter()
    ours = [(f.type, f.start, f.end) for f in engine.find(corpus.text)]
    ours_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        corpus_path = Path(tmp) / "corpus.txt"
        corpus_path.write_text(corpus.text, encoding="utf-8")
        presidio = run_presidio(corpus_path, args.presidio_seconds)

    report: dict[str, Any] = {
        "corpus": {
            "bytes": total_bytes,
            "chars": len(corpus.text),
            "lines": corpus.text.count("\n"),
            "planted": len(corpus.truth),
            "planted_by_type": dict(sorted(Counter(t[0] for t in corpus.truth).items())),
            "seed": args.seed,
            "generated_s": round(generated, 2),
        },
        "themisdb": {
            "patterns_version": engine.version,
            "seconds": round(ours_seconds, 3),
            "mb_per_s": mb_per_s(total_bytes, ours_seconds),
            "findings": len(ours),
            "score": score(ours, corpus.truth).as_dict(),
            "worst_case_s_per_mb": time_worst_cases(engine),
        },
    }
    status = 0
    if "error" in presidio:
        report["presidio"] = {"error": presidio["error"]}
        status = 1
    else:
        prefix = int(presidio["chars"])
        truth = [t for t in corpus.truth if t[2] <= prefix]
        mapped = [
            (PRESIDIO_TYPES.get(kind, kind), start, end, s)
            for kind, start, end, s in presidio["results"]
        ]
        report["presidio"] = {
            "version": presidio["version"],
            "bytes_analyzed": presidio["bytes"],
            "fraction_of_corpus": round(presidio["bytes"] / total_bytes, 3),
            "seconds": round(presidio["seconds"], 3),
            "mb_per_s": mb_per_s(presidio["bytes"], presidio["seconds"]),
            "findings": len(mapped),
            "score_all": score([m[:3] for m in mapped], truth).as_dict(),
            "score_at_0.5": score([m[:3] for m in mapped if m[3] >= 0.5], truth).as_dict(),
        }
        report["themisdb_on_presidio_prefix"] = score(
            [f for f in ours if f[2] <= prefix], truth
        ).as_dict()
        ratio = (report["themisdb"]["mb_per_s"] or 0) / (report["presidio"]["mb_per_s"] or 1)
        report["speedup"] = round(ratio, 1)
    if args.json:
        print(json.dumps(report, indent=2))
        return status
    print_report(report)
    return status


def print_report(report: dict[str, Any]) -> None:
    c = report["corpus"]
    print(
        f"corpus: {c['bytes'] / 1e6:.1f} MB, {c['lines']} lines, {c['planted']} planted values "
        f"(seed {c['seed']}): {c['planted_by_type']}"
    )
    t = report["themisdb"]
    print(
        f"themisdb (RE2, patterns v{t['patterns_version']}): {t['mb_per_s']} MB/s "
        f"({t['seconds']} s), {t['findings']} findings"
    )
    print(f"  score (whole corpus): {t['score']}")
    print(f"  worst cases, seconds per MB: {t['worst_case_s_per_mb']}")
    p = report["presidio"]
    if "error" in p:
        print(f"presidio: FAILED\n{p['error']}")
        return
    print(
        f"presidio-analyzer {p['version']} (pattern recognizers, NoOpNlpEngine): "
        f"{p['mb_per_s']} MB/s ({p['seconds']} s for {p['bytes_analyzed'] / 1e6:.2f} MB, "
        f"{p['fraction_of_corpus']:.0%} of the corpus), {p['findings']} results"
    )
    print(f"  score, every result:  {p['score_all']}")
    print(f"  score, score >= 0.5:  {p['score_at_0.5']}")
    print(f"themisdb on the same prefix: {report['themisdb_on_presidio_prefix']}")
    print(f"speed ratio themisdb / presidio: {report['speedup']}x")


if __name__ == "__main__":
    sys.exit(main())
