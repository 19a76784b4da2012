"""Credentials in source files: which rule fired, on which line, and how to redact them.

A model trained on a team's code types what it saw into a colleague's editor, so a file
holding a live credential must not reach the corpus. Two kinds of rule:

- token formats that identify themselves (a provider's prefix and alphabet: AWS, GitHub,
  GitLab, Slack, Stripe, OpenAI, Anthropic, Hugging Face, npm, PyPI, SendGrid, JWTs,
  private-key blocks, ...): any match counts;
- a credential-named variable (`DB_PASSWORD`, `password: str`, `PRIVATE_TOKEN`,
  `api_key`...) or a URL's user:password, assigned a literal that looks like a real value
  (long enough, not a placeholder, not a plain word): judged by the value.

`training/secrets_bench.py` measures recall on planted credentials and false alarms on
real code for these rules and for Yelp's detect-secrets (`--secret-scanner`), which
`prepare` can use in addition when it is installed.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

TOKEN_RULES: dict[str, re.Pattern[str]] = {
    # The whole block (to its END line, or the base64 that follows), so that redaction removes the key.
    "private key": re.compile(
        r"-----BEGIN ((RSA|DSA|EC|OPENSSH|PGP|ENCRYPTED) )?PRIVATE KEY( BLOCK)?-----"
        r"(?:[\s\S]*?-----END [A-Z ]*PRIVATE KEY( BLOCK)?-----|[A-Za-z0-9+/=\s\\]*)"
    ),
    "AWS access key": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{40}", re.IGNORECASE),
    "GitHub token": re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b"),
    "GitLab token": re.compile(r"\bglpat-[A-Za-z0-9_\-]{20,}"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}|hooks\.slack\.com/services/T\w+/B\w+/\w+"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    "Google OAuth client secret": re.compile(r"\bGOCSPX-[A-Za-z0-9_\-]{28}\b"),
    "Stripe key": re.compile(r"\b[sr]k_live_[0-9a-zA-Z]{24,}\b"),
    "Anthropic or OpenAI key": re.compile(r"\bsk-(proj-|ant-(api\d\d-)?)?[A-Za-z0-9_\-]{32,}"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "npm token": re.compile(r"\bnpm_[A-Za-z0-9]{36}\b"),
    "PyPI token": re.compile(r"\bpypi-AgE[A-Za-z0-9_\-]{50,}"),
    "SendGrid key": re.compile(r"\bSG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}\b"),
    "JSON Web Token": re.compile(r"\beyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}"),
    "Twilio key": re.compile(r"\bSK[0-9a-f]{32}\b"),
    "Mailchimp key": re.compile(r"\b[0-9a-f]{32}-us\d{1,2}\b"),
    "Telegram bot token": re.compile(r"\b\d{8,10}:AA[A-Za-z0-9_\-]{33}\b"),
    "Discord bot token": re.compile(r"\b[MN][A-Za-z\d]{23,25}\.[\w-]{6}\.[\w-]{27,38}\b"),
    "Azure storage key": re.compile(r"AccountKey=[A-Za-z0-9+/]{86}==", re.IGNORECASE),
    "Shopify token": re.compile(r"\bshp(at|ss|ca|pa)_[a-fA-F0-9]{32}\b"),
    "DigitalOcean token": re.compile(r"\bdo[por]_v1_[a-f0-9]{64}\b"),
    "Databricks token": re.compile(r"\bdapi[a-f0-9]{32}\b"),
    "Square token": re.compile(r"\b(sq0atp|sq0csp|EAAA)[A-Za-z0-9_\-]{22,60}\b"),
}

# A name that says "this holds a credential", as a whole identifier or its last part
# (DB_PASSWORD, dbPassword, private_token, SECRET_KEY), then = or : (with a type
# annotation or not), then a quoted literal.
# Literal text every match of a rule contains: a rule runs only on texts holding one (a
# regex pass per rule costs 20 ns a character; `in` on a string is a hundred times cheaper).
TOKEN_HINTS: dict[str, tuple[str, ...]] = {
    "private key": ("PRIVATE KEY",),
    "AWS access key": ("AKIA", "ASIA"),
    "AWS secret key": ("ws_secret_access_key", "WS_SECRET_ACCESS_KEY"),
    "GitHub token": ("gh", "github_pat_"),
    "GitLab token": ("glpat-",),
    "Slack token": ("xox", "hooks.slack.com"),
    "Google API key": ("AIza",),
    "Google OAuth client secret": ("GOCSPX-",),
    "Stripe key": ("k_live_",),
    "Anthropic or OpenAI key": ("sk-",),
    "Hugging Face token": ("hf_",),
    "npm token": ("npm_",),
    "PyPI token": ("pypi-AgE",),
    "SendGrid key": ("SG.",),
    "JSON Web Token": ("eyJ",),
    "Twilio key": ("SK",),
    "Mailchimp key": ("-us",),
    "Telegram bot token": (":AA",),
    "Discord bot token": (".",),
    "Azure storage key": ("ccountKey=", "CCOUNTKEY="),
    "Shopify token": ("shp",),
    "DigitalOcean token": ("_v1_",),
    "Databricks token": ("dapi",),
    "Square token": ("sq0", "EAAA"),
}

CREDENTIAL_NAME = (
    r"[A-Za-z0-9_]*(?:password|passwd|passphrase|pwd|secret|secret_?key|token|api_?key|apikey|access_?key|auth_?key"
    r"|private_?key|client_?secret|credentials?)"
)  # ending the name: `tokenizer_class`, `pad_token_id` or `password_field` hold no credential
CREDENTIAL_ASSIGNMENT = re.compile(
    rf"(?P<name>{CREDENTIAL_NAME})['\"]?\s*(?::\s*[A-Za-z_][\w\[\], .|]*)?\s*(?:=|:|=>|:=)\s*"
    r"(?:(?P<quote>['\"`])(?P<value>[^'\"`\s]{8,200})(?P=quote)"
    # Unquoted, to the end of the line: YAML, .env and INI values.
    r"|(?P<bare>[^\s'\"`#(),;{}\[\]]{16,200})\s*$)",
    re.IGNORECASE,
)
# Lines without one of these cannot hold a credential assignment: the full pattern runs on
# the others only (it backtracks over long identifiers; the standard library scans 10x faster).
CREDENTIAL_HINT = re.compile(r"pass|pwd|secret|token|key|credential", re.IGNORECASE)
URL_CREDENTIALS = re.compile(
    r"\b[a-z][a-z0-9+.\-]{1,20}://(?P<user>[^\s:/@'\"]{1,64}):(?P<value>[^\s@/'\"]{3,128})@[\w.\-]"
)
PLACEHOLDER = re.compile(
    r"example|changeme|change_me|your|xxx|dummy|test|fake|sample|placeholder|redacted|secret_here|password_here"
    r"|<|>|\$\{|\{\{|\$[A-Z_]|%\(|%s|\*\*\*|\.\.\.|^pass(word)?$|^[a-z]+$",
    re.IGNORECASE,
)
REDACTED = "<REDACTED>"


@dataclass(frozen=True)
class Finding:
    rule: str
    line: int
    """1-based line of the match."""
    start: int
    end: int
    """The secret's span in the text (what redaction replaces)."""


def shannon_entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def looks_real(value: str) -> bool:
    """A literal that looks like a credential: not a placeholder, not an identifier or a word,
    varied enough. `s3cr3t-Passw0rd!` does; `password_for_admin`, `${DB_PASS}`, `example` do not."""
    if PLACEHOLDER.search(value):
        return False
    if re.fullmatch(r"[-/_.:\[\]]*[A-Za-z]+(?:[-/_.:\[\]]+[A-Za-z]+)*[-/_.:\[\]]*", value):  # words, a path, [SEP]
        return False
    kinds = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d", r"[^A-Za-z0-9]"))
    return kinds >= 2 and shannon_entropy(value) >= 2.8


def find_secrets(text: str) -> list[Finding]:
    """Every credential-looking string in text, in order."""
    findings: list[tuple[int, int, str]] = []
    for rule, pattern in TOKEN_RULES.items():
        if any(hint in text for hint in TOKEN_HINTS[rule]):
            findings.extend((m.start(), m.end(), rule) for m in pattern.finditer(text))
    offset = 0
    for line in text.splitlines(keepends=True):
        if CREDENTIAL_HINT.search(line):
            for m in CREDENTIAL_ASSIGNMENT.finditer(line.rstrip("\r\n")):
                group = "value" if m.group("value") is not None else "bare"
                if looks_real(m.group(group)):
                    span = (offset + m.start(group), offset + m.end(group))
                    findings.append((*span, f"credential assignment ({m.group('name')})"))
        offset += len(line)
    for m in URL_CREDENTIALS.finditer(text) if "@" in text else ():
        if not PLACEHOLDER.search(m.group("value")):
            findings.append((m.start("value"), m.end("value"), "password in a URL"))
    findings.sort()
    return [Finding(rule, text.count("\n", 0, start) + 1, start, end) for start, end, rule in findings]


def redact(text: str, findings: list[Finding]) -> str:
    """text with each finding's span replaced by REDACTED (overlapping spans merged)."""
    out, last = [], 0
    for f in sorted(findings, key=lambda f: f.start):
        if f.start < last:
            last = max(last, f.end)
            continue
        out.append(text[last : f.start])
        out.append(REDACTED)
        last = f.end
    out.append(text[last:])
    return "".join(out)


def detect_secrets_findings(text: str, filename: str) -> list[Finding]:
    """Findings of Yelp's detect-secrets (its default plugins and filters) for one file's text.

    Raises ImportError when it is not installed. It reports lines, not spans: a redaction
    of one of its findings replaces the whole line's secret-looking value it names."""
    import os
    import tempfile

    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    suffix = os.path.splitext(filename)[1] or ".txt"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "file" + suffix)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        collection = SecretsCollection()
        with default_settings():
            collection.scan_file(path)
        found = [s for secrets in collection.data.values() for s in secrets]
    line_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
    out = []
    for secret in found:
        start = line_starts[secret.line_number - 1]
        end = text.find("\n", start)
        value = secret.secret_value or ""
        at = text.find(value, start, end if end >= 0 else len(text)) if value else -1
        span = (at, at + len(value)) if at >= 0 else (start, end if end >= 0 else len(text))
        out.append(Finding(f"detect-secrets: {secret.type}", secret.line_number, *span))
    return sorted(out, key=lambda f: f.start)
