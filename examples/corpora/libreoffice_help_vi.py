"""Makes libreoffice-help-vi.jsonl: the Vietnamese paragraphs of LibreOffice Writer's how-to guides, a page a record.

    apt-get download libreoffice-help-vi && dpkg-deb -x libreoffice-help-vi_*.deb pkg
    python examples/corpora/libreoffice_help_vi.py pkg/usr/share/libreoffice/help/vi/text/swriter/guide \
        examples/corpora/libreoffice-help-vi.jsonl

The Vietnamese help is partly translated: a page mixes Vietnamese paragraphs with English ones. Each page's
main text (its DisplayArea: no menus, index or footer) is kept a paragraph (heading, list item, cell) at a
time, and only the paragraphs of which at least 30% of the words carry Vietnamese letters; a paragraph seen on
an earlier page is dropped, and a page left with fewer than two (a title alone). Pages in file-name order
until MAX_BYTES of text.
"""

import json
import os
import re
import sys
from html.parser import HTMLParser

MAX_BYTES = 45_000
VIETNAMESE = set("ăâđêôơưàảãáạằẳẵắặầẩẫấậèẻẽéẹềểễếệìỉĩíịòỏõóọồổỗốộờởỡớợùủũúụừửữứựỳỷỹýỵ")
BREAKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "td", "th", "div", "br", "tr", "pre"}


class PageText(HTMLParser):
    """The paragraphs of a help page's main text, its DisplayArea."""

    def __init__(self):
        super().__init__()
        self.parts, self.depth = [], 0

    def handle_starttag(self, tag, attrs):
        if self.depth:
            self.depth += tag == "div"
        elif tag == "div" and ("id", "DisplayArea") in attrs:
            self.depth = 1
        if tag in BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if self.depth and tag == "div":
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.parts.append(data)

    def paragraphs(self):
        return [p for p in (re.sub(r"\s+", " ", line).strip() for line in "".join(self.parts).split("\n")) if p]


def vietnamese(paragraph):
    words = paragraph.split()
    return sum(any(c in VIETNAMESE for c in w.lower()) for w in words) >= 0.3 * len(words)


def main(folder, out):
    seen, size = set(), 0
    with open(out, "w", encoding="utf-8") as f:
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".html") or size >= MAX_BYTES:
                continue
            page = PageText()
            with open(os.path.join(folder, name), encoding="utf-8") as html:
                page.feed(html.read())
            kept = []
            for paragraph in page.paragraphs():
                if vietnamese(paragraph) and paragraph not in seen:
                    kept.append(paragraph)
                    seen.add(paragraph)
            if len(kept) > 1:
                text = "\n\n".join(kept)
                f.write(json.dumps({"title": name[:-len(".html")], "text": text}, ensure_ascii=False) + "\n")
                size += len(text.encode("utf-8"))


if __name__ == "__main__":
    main(*sys.argv[1:])
