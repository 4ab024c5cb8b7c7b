"""Translations of the web console (English source strings, gettext catalogs).

The catalogs are the ``.po`` files under ``locale/<code>/LC_MESSAGES/messages.po``.
They are compiled in memory at start-up with Babel (no ``.mo`` build step), so a
translator edits one text file and restarts. The current request's language is
held in a context variable; :func:`gettext` and :func:`ngettext` read it, and
the templates call them through Jinja2's ``i18n`` extension (``_("…")``).

Language choice: the ``salus_lang`` cookie (set from the language menu), else
the browser's ``Accept-Language``, else English. ``python -m salus.console.i18n``
re-extracts the strings and merges them into every catalog.
"""

from __future__ import annotations

import gettext as _gettext
import io
import sys
from contextvars import ContextVar
from functools import cache
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

__all__ = [
    "DEFAULT_LOCALE",
    "N_",
    "LANGUAGE_COOKIE",
    "LOCALES",
    "current_locale",
    "extract_catalog",
    "load_catalog",
    "missing_translations",
    "gettext",
    "ngettext",
    "negotiate",
    "translations",
    "use_locale",
]

PACKAGE = Path(__file__).parent
LOCALE_DIR = PACKAGE / "locale"
DEFAULT_LOCALE = "en"
#: Languages offered in the menu, with their own names.
LOCALES: dict[str, str] = {"en": "English", "vi": "Tiếng Việt", "fr": "Français"}
LANGUAGE_COOKIE = "salus_lang"

_current: ContextVar[str] = ContextVar("salus_console_locale", default=DEFAULT_LOCALE)


def load_catalog(code: str) -> Catalog:
    """Every ``.po`` file of ``code`` merged into one catalog.

    A language's strings may be split into several files
    (``messages.po`` for the frame, one per group of pages), so that people
    translating or building different pages do not edit the same file.
    """
    merged = Catalog(locale=code, project="Salus console")
    folder = LOCALE_DIR / code / "LC_MESSAGES"
    for po in sorted(folder.glob("*.po")) if folder.is_dir() else []:
        with po.open("rb") as handle:
            part = read_po(handle, locale=code)
        for message in part:
            if message.id and message.string and not message.fuzzy:
                merged.add(message.id, message.string, context=message.context)
    return merged


@cache
def translations(code: str) -> _gettext.NullTranslations:
    """The compiled catalog of ``code`` (English: the source strings)."""
    if code == DEFAULT_LOCALE:
        return _gettext.NullTranslations()
    buffer = io.BytesIO()
    write_mo(buffer, load_catalog(code))
    buffer.seek(0)
    return _gettext.GNUTranslations(buffer)


def missing_translations(code: str) -> list[str]:
    """Source strings with no translation in ``code``."""
    have = load_catalog(code)
    missing = []
    for message in extract_catalog():
        if not message.id:
            continue
        found = have.get(message.id, context=message.context)
        if found is None or not found.string:
            missing.append(message.id if isinstance(message.id, str) else message.id[0])
    return sorted(set(missing))


def use_locale(code: str) -> None:
    _current.set(code if code in LOCALES else DEFAULT_LOCALE)


def current_locale() -> str:
    return _current.get()


def N_(message: str) -> str:  # noqa: N802 - the gettext convention
    """Mark a string for extraction; it is translated later, where it is shown."""
    return message


def gettext(message: str) -> str:
    return translations(_current.get()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations(_current.get()).ngettext(singular, plural, n)


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    """The language for a request: the cookie, else the browser's preference."""
    if cookie in LOCALES:
        return cookie
    if accept_language:
        wanted = []
        for part in accept_language.split(","):
            tag, _, params = part.strip().partition(";")
            quality = 1.0
            if params.strip().startswith("q="):
                try:
                    quality = float(params.strip()[2:])
                except ValueError:
                    quality = 0.0
            if tag:
                wanted.append((quality, tag.replace("-", "_")))
        wanted.sort(key=lambda item: -item[0])
        try:
            found = Locale.negotiate([tag for _, tag in wanted], list(LOCALES), sep="_")
        except (ValueError, UnknownLocaleError):
            found = None
        if found is not None and found.language in LOCALES:
            return found.language
    return DEFAULT_LOCALE


def extract_catalog() -> Catalog:
    """Every translatable string of the console: ``_()`` in the Python modules
    and the templates."""
    catalog = Catalog(project="Salus console", domain="messages")
    method_map = [("**.py", "python"), ("templates/**.html", "jinja2.ext:babel_extract")]
    options = {"templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    for filename, lineno, message, comments, context in extract_from_dir(
        str(PACKAGE),
        method_map,
        options_map=options,
        keywords={"_": None, "N_": None, "gettext": None, "ngettext": (1, 2)},
    ):
        catalog.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return catalog


def add_missing(code: str, filename: str = "messages.po") -> int:  # pragma: no cover
    """Append the untranslated strings of ``code`` to ``filename`` (empty
    ``msgstr``), for a translator to fill in."""
    missing = missing_translations(code)
    po = LOCALE_DIR / code / "LC_MESSAGES" / filename
    if po.is_file():
        with po.open("rb") as handle:
            catalog = read_po(handle, locale=code)
    else:
        catalog = Catalog(locale=code, project="Salus console")
    for message_id in missing:
        if catalog.get(message_id) is None:
            catalog.add(message_id, "")
    po.parent.mkdir(parents=True, exist_ok=True)
    with po.open("wb") as handle:
        write_po(handle, catalog, width=100, sort_output=True, ignore_obsolete=True)
    return len(missing)


def main(argv: list[str]) -> int:  # pragma: no cover - a maintainer's command
    """``python -m salus.console.i18n [missing|add FILE]``: list the strings a
    language lacks, or add them (empty) to one of its files."""
    command = argv[0] if argv else "missing"
    for code in LOCALES:
        if code == DEFAULT_LOCALE:
            continue
        if command == "add":
            count = add_missing(code, argv[1] if len(argv) > 1 else "messages.po")
            print(f"{code}: {count} strings added", file=sys.stderr)
        else:
            for message_id in missing_translations(code):
                print(f"{code}\t{message_id}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
