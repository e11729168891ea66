"""A small driver for the console's pages in Playwright: enter a key, fill a
form generated from the OpenAPI schema whatever shape a field took (a typed
input, a select, a checkbox group or a JSON box), wait for jobs, take
numbered screenshots. (A plain module with a unique name, like
service_harness.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

JOB_URL = re.compile(r"/ui/jobs/([0-9a-f-]{36})$")


class Console:
    def __init__(self, page, base_url: str, shots: Path, who: str) -> None:
        self.page = page
        self.base_url = base_url
        self.shots = shots
        self.who = who
        self.errors: list[str] = []
        self._n = 0
        shots.mkdir(parents=True, exist_ok=True)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", self._console)

    def _console(self, message) -> None:
        # The browser logs every 4xx the tests provoke on purpose (401, 404,
        # 422) as "Failed to load resource"; anything else is a script error.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"console error: {message.text}")

    # -- navigation ------------------------------------------------------------------
    def goto(self, path: str) -> None:
        self.page.goto(self.base_url + path)

    def shot(self, name: str) -> Path:
        self._n += 1
        path = self.shots / f"{self._n:02d}-{self.who}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def enter_key(self, key: str) -> None:
        """Type the key and press Enter, as a keyboard user would."""
        field = self.page.get_by_label("API key", exact=True)
        field.wait_for()
        field.fill(key)
        field.press("Enter")

    def signed_in(self) -> None:
        self.page.locator("#main").wait_for(state="visible")

    # -- forms -----------------------------------------------------------------------
    def open_groups(self, form: str) -> None:
        self.page.eval_on_selector_all(
            f"{form} details", "els => els.forEach(e => (e.open = true))"
        )

    def fill(self, values: dict[str, Any], prefix: str = "") -> None:
        """Set each value on the control whose data-path is its dotted name.
        An object either has a group of controls (recursed into) or is one
        JSON box; a missing control is a failure."""
        for name, value in values.items():
            path = f"{prefix}{name}"
            control = self.page.locator(f'[data-path="{path}"]')
            if control.count() == 0:
                if isinstance(value, dict):
                    self.fill(value, f"{path}.")
                    continue
                raise AssertionError(f"the form has no field {path!r}")
            kind = control.get_attribute("data-kind")
            tag = control.evaluate("e => e.tagName")
            if kind == "json":
                control.fill(json.dumps(value))
            elif kind == "boolean":
                control.set_checked(bool(value))
            elif kind == "multi":
                for item in value:
                    control.locator(f"input[value='{json.dumps(item)}']").check()
            elif kind and kind.startswith("list-"):
                control.fill(", ".join(str(v) for v in value))
            elif tag == "SELECT":
                option = json.dumps(value) if kind == "choice" else str(value)
                control.select_option(value=option)
            else:
                control.fill(str(value))

    def error_for(self, field: str):
        return self.page.locator(f'[data-error-for="{field}"]')

    # -- jobs ------------------------------------------------------------------------
    def submit_job(self) -> str:
        """Press Start; the new job's id once its page opens (or the errors
        the form showed instead, as the failure)."""
        # Focus and Enter, not a click at coordinates: on the train form the
        # click was seen to land on the form itself (the button had moved
        # after Playwright's hit test; the cause of the late layout shift is
        # not pinned down), so nothing was submitted. Enter on the focused
        # submit button is a user's way of pressing it too, through the same
        # submit handler.
        start = self.page.get_by_role("button", name="Start", exact=True)
        start.focus()
        start.press("Enter")
        self.page.wait_for_function(
            "() => /\\/ui\\/jobs\\/[0-9a-f-]{36}$/.test(location.pathname) ||"
            " Array.from(document.querySelectorAll('.field-error, #alert'))"
            ".some(e => e.textContent.trim() && !e.closest('[hidden]'))",
            timeout=30_000,
        )
        found = JOB_URL.search(self.page.url)
        if found is None:
            shown = [t for t in self.page.locator(".field-error, #alert").all_inner_texts() if t]
            self.shot("submit-refused")
            raise AssertionError(f"the job was not accepted: {shown}")
        return found.group(1)

    def wait_job(self, timeout_s: float = 240) -> str:
        """Wait on the job page until the job leaves queued/running; its state."""
        self.page.wait_for_function(
            "() => { const b = document.querySelector('#job-summary .badge');"
            " return b && /^(succeeded|failed|cancelled)/.test(b.textContent); }",
            timeout=timeout_s * 1000,
        )
        return self.page.locator("#job-summary .badge").inner_text()

    def stage_bars(self) -> dict[str, tuple[int | None, str]]:
        """stage name -> (progress value or None, the percentage shown)."""
        return self.page.eval_on_selector_all(
            "#stages li",
            """els => Object.fromEntries(els.map(li => {
                 const bar = li.querySelector('progress');
                 return [li.dataset.stage, [bar.hasAttribute('value') ? bar.value : null,
                                            li.querySelector('.pct').textContent]];
               }))""",
        )

    def chart_count(self) -> int:
        return self.page.evaluate(
            "() => Array.from(document.querySelectorAll('canvas'))"
            ".filter(c => window.Chart && window.Chart.getChart(c)).length"
        )
