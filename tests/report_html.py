"""Parsing report.html in tests: gallery cards, class-filter options, images, tables, URLs and text."""
from html.parser import HTMLParser


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cards, self.options, self.images, self.text = [], [], [], []
        self.urls, self.tables = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and "card" in (a.get("class") or "").split():
            self.cards.append(a)
        if tag == "option":
            self.options.append(a["value"])
        if tag == "img":
            self.images.append(a["src"])
        if tag == "table":
            self.tables.append(a.get("id"))
        for key in ("src", "href"):
            if a.get(key):
                self.urls.append(a[key])

    def handle_data(self, data):
        self.text.append(data)


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    return p
