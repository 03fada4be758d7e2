"""README's quick-start commands are exactly what CI runs."""

import re

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_readme_install_and_test_commands():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    blocks = _bash_blocks(readme)
    install, test = blocks[0], blocks[2]
    for line in install.splitlines() + test.splitlines():
        assert line in ci.splitlines(), f"README command not run verbatim by .ci/run: {line!r}"
    assert "constraints.txt" in install
