"""Stand-in for ``slicer.i18n``: translation functions that return the text unchanged."""


def tr(text: str) -> str:
    return text


def translate(context: str, text: str) -> str:
    return text


def getContext(path: str) -> str:
    return ""
