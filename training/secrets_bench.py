"""Which secret scanner should `prepare` trust? Recall on planted credentials, false alarms on real code.

    python -m training.secrets_bench [--code DIR ...] [--max-files N]

Planted: one file per kind of credential (realistic fake values drawn from a seeded RNG,
in the code that would hold them), and files of look-alikes that are not credentials
(placeholders, environment lookups, hashes). Real code: Python files of the folders given
(default: this interpreter's standard library, tests included), which hold no live
credentials, so every file a scanner flags there is a false alarm (or test data: key
fixtures, sample tokens in docs). Compared side by side in one run: the built-in rules
(training/secrets.py), Yelp's detect-secrets 1.x with its default plugins and filters, and
both together. detect-secrets is optional (`pip install detect-secrets`).
"""

# ruff: noqa: E501  (the samples are a table, one line per kind, easier to read unwrapped)
from __future__ import annotations

import argparse
import base64
import json
import random
import string
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

from engine.machine import describe_machine
from training.secrets import detect_secrets_findings, find_secrets

ALNUM = string.ascii_letters + string.digits


def draw(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def jwt(rng: random.Random) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    header, claims = part({"alg": "HS256", "typ": "JWT"}), part({"sub": draw(rng, string.digits, 8), "iat": 1700000000})
    return f"{header}.{claims}.{draw(rng, ALNUM + '-_', 43)}"


def planted(seed: int = 0) -> dict[str, tuple[str, str]]:
    """kind -> (file name, text holding one credential of that kind)."""
    r = random.Random(seed)
    hexd = string.hexdigits[:16]
    pw = draw(r, ALNUM, 10) + "!" + draw(r, string.digits, 3)
    return {
        "AWS access key": (
            "settings.py",
            f"AWS_ACCESS_KEY_ID = 'AKIA{draw(r, string.ascii_uppercase + string.digits, 16)}'\n",
        ),
        "AWS secret key": ("aws.cfg", f"[default]\naws_secret_access_key = {draw(r, ALNUM + '/+', 40)}\n"),
        "private key": ("keys.py", "KEY = '''-----BEGIN RSA PRIVATE KEY-----\n" + draw(r, ALNUM, 64) + "\n'''\n"),
        "GitHub token": ("ci.py", f"token = 'ghp_{draw(r, ALNUM, 36)}'\n"),
        "GitLab token": ("ci.yml", f"variables:\n  GL_TOKEN: glpat-{draw(r, ALNUM, 20)}\n"),
        "Slack token": ("notify.py", f"SLACK = 'xoxb-{draw(r, string.digits, 12)}-{draw(r, ALNUM, 24)}'\n"),
        "Slack webhook": (
            "hook.js",
            f"const url = 'https://hooks.slack.com/services/T{draw(r, ALNUM, 8)}/B{draw(r, ALNUM, 8)}/{draw(r, ALNUM, 24)}';\n",
        ),
        "Google API key": ("maps.js", f"const key = 'AIza{draw(r, ALNUM + '-_', 35)}';\n"),
        "Stripe key": ("pay.py", f"stripe.api_key = 'sk_live_{draw(r, ALNUM, 24)}'\n"),
        "OpenAI key": ("llm.py", f"client = OpenAI(api_key='sk-proj-{draw(r, ALNUM, 48)}')\n"),
        "Hugging Face token": ("hub.py", f"login(token='hf_{draw(r, ALNUM, 34)}')\n"),
        "npm token": (".npmrc.js", f"const NPM = 'npm_{draw(r, ALNUM, 36)}';\n"),
        "PyPI token": ("publish.py", f"TWINE_PASSWORD = 'pypi-AgEIcHlwaS5vcmc{draw(r, ALNUM + '-_', 60)}'\n"),
        "SendGrid key": (
            "mail.py",
            f"sg = SendGridAPIClient('SG.{draw(r, ALNUM + '-_', 22)}.{draw(r, ALNUM + '-_', 43)}')\n",
        ),
        "JSON Web Token": ("auth_test.py", f"HEADERS = {{'Authorization': 'Bearer {jwt(r)}'}}\n"),
        "Twilio key": ("sms.py", f"TWILIO_KEY = 'SK{draw(r, hexd, 32)}'\n"),
        "Telegram bot token": ("bot.py", f"BOT = '{draw(r, string.digits, 10)}:AA{draw(r, ALNUM + '-_', 33)}'\n"),
        "DB_PASSWORD constant": ("config.py", f'DB_PASSWORD = "{pw}"\n'),
        "annotated password": (
            "models.py",
            f'class Config:\n    password: str = "{draw(r, ALNUM, 12)}#{draw(r, string.digits, 2)}"\n',
        ),
        "PRIVATE_TOKEN": ("gitlab.py", f'PRIVATE_TOKEN = "{draw(r, ALNUM, 20)}"\n'),
        "postgres URL": (
            "db.py",
            f"engine = create_engine('postgres://app:{draw(r, ALNUM, 14)}@db.internal:5432/prod')\n",
        ),
        "password keyword arg": (
            "conn.py",
            f"connect(host='db', user='svc', password='{draw(r, ALNUM, 9)}@{draw(r, string.digits, 3)}')\n",
        ),
        "secret key (Django)": ("settings_prod.py", f"SECRET_KEY = '{draw(r, ALNUM + '!@#%^&*(-_=+)', 50)}'\n"),
        "client secret in JSON": ("oauth.json", f'{{"client_id": "web", "client_secret": "{draw(r, ALNUM, 24)}"}}\n'),
        "api key in YAML": ("deploy.yaml", f"service:\n  api_key: {draw(r, hexd, 32)}\n"),
    }


def look_alikes() -> dict[str, tuple[str, str]]:
    """Texts that must not count as credentials."""
    return {
        "placeholder": ("a.py", 'password = "changeme"\nAPI_KEY = "your-api-key-here"\n'),
        "environment": ("b.py", 'DB_PASSWORD = os.environ["DB_PASSWORD"]\ntoken = get_token()\n'),
        "template": ("c.py", 'password = "${DB_PASSWORD}"\nurl = "postgres://user:password@localhost/db"\n'),
        "hash constant": (
            "d.py",
            'EXPECTED_SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"\n',
        ),
        "uuid": ("e.py", 'NAMESPACE = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"\n'),
        "word values": ("f.py", 'password_field = "password_confirmation"\nTOKEN_TYPE = "bearer_token"\n'),
        "docs": ("g.md", "Set `token` to the value shown on the settings page.\n"),
    }


Scanner = Callable[[str, str], list]


def scanners() -> dict[str, Scanner]:
    out: dict[str, Scanner] = {"built-in rules": lambda text, name: find_secrets(text)}
    try:
        import detect_secrets  # noqa: F401

        out["detect-secrets"] = detect_secrets_findings
        out["both"] = lambda text, name: find_secrets(text) + detect_secrets_findings(text, name)
    except ImportError:
        print("detect-secrets is not installed: comparing the built-in rules alone", file=sys.stderr)
    return out


def real_code(folders: list[Path], max_files: int) -> list[Path]:
    files = sorted(
        p for folder in folders for p in folder.rglob("*.py") if "site-packages" not in p.relative_to(folder).parts
    )
    step = max(1, len(files) // max_files)
    return files[::step][:max_files]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.secrets_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, nargs="*", help="folders of real code (default: the standard library)")
    parser.add_argument("--max-files", type=int, default=800, help="real-code files scanned, evenly spread")
    args = parser.parse_args(argv)
    folders = args.code or [Path(sysconfig.get_paths()["stdlib"])]
    files = real_code(folders, args.max_files)
    texts = []
    for path in files:
        try:
            texts.append((path, path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    kinds, alikes = planted(), look_alikes()
    print(f"machine: {describe_machine()}; {time.strftime('%Y-%m-%d')}")
    print(f"planted: {len(kinds)} kinds of credential; look-alikes: {len(alikes)} files; real code: {len(texts)} files")
    print()
    print("| scanner | planted found | look-alikes flagged | real-code files flagged | seconds |")
    print("| --- | ---: | ---: | ---: | ---: |")
    missed: dict[str, list[str]] = {}
    for name, scan in scanners().items():
        started = time.perf_counter()
        found = [kind for kind, (file, text) in kinds.items() if scan(text, file)]
        false = [kind for kind, (file, text) in alikes.items() if scan(text, file)]
        flagged = [path for path, text in texts if scan(text, path.name)]
        seconds = time.perf_counter() - started
        missed[name] = [kind for kind in kinds if kind not in found]
        rate = f"{len(flagged)} ({100 * len(flagged) / max(len(texts), 1):.1f}%)"
        print(f"| {name} | {len(found)} / {len(kinds)} | {len(false)} / {len(alikes)} | {rate} | {seconds:.1f} |")
    print()
    for name, kinds_missed in missed.items():
        print(f"{name} missed: {', '.join(kinds_missed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
