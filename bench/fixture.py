#!/usr/bin/env python3
"""Generates the deterministic fixture site the bench serves with nginx.

    fixture.py OUT_DIR PAGES TINY

- catalogue/page-N.html, N = 1..PAGES: 20 products each, padded with
  descriptions to about 30 KB, with the markup of benches/extract.rs (so the
  raw parse figure of that bench is for the same page), and a "next" link to
  page N+1 (none on the last page).
- tiny/N.html, N = 1..TINY: one product each, for the schedule test.
- paths.txt: every catalogue path, one a line, for wrk.

Prints a JSON summary (sizes and a SHA-256 over every page, which proves two
runs used the same site).
"""

import hashlib
import json
import os
import sys

ITEMS_PER_PAGE = 20
DESC = "A long description of the book, as shops write them. " * 25


def catalogue_page(n: int, pages: int) -> str:
    parts = ["<!DOCTYPE html><html><head><title>Catalogue</title></head><body><main>"]
    for k in range(1, ITEMS_PER_PAGE + 1):
        i = (n - 1) * ITEMS_PER_PAGE + k
        parts.append(
            '<article class="product">'
            f'<h3><a href="/catalogue/item-{i}.html" title="Book {i}">Book {i}</a></h3>'
            f'<p class="price">£{i}.99</p><span class="tag">t{i % 3}</span><span class="tag">all</span>'
            f'<div class="desc"><p>{DESC}</p></div></article>'
        )
    pager = f'<li class="next"><a href="page-{n + 1}.html">next</a></li>' if n < pages else ""
    parts.append(f'<ul class="pager">{pager}</ul></main></body></html>')
    return "".join(parts)


def tiny_page(n: int) -> str:
    return (
        "<!DOCTYPE html><html><head><title>Tiny</title></head><body>"
        f'<article class="product"><h3><a href="/tiny/item-{n}.html" title="Tiny {n}">Tiny {n}</a></h3>'
        f'<p class="price">£{n}.50</p><span class="tag">tiny</span></article></body></html>'
    )


def main() -> None:
    out, pages, tiny = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.makedirs(f"{out}/catalogue", exist_ok=True)
    os.makedirs(f"{out}/tiny", exist_ok=True)
    digest = hashlib.sha256()
    total = 0
    with open(f"{out}/paths.txt", "w") as paths:
        for n in range(1, pages + 1):
            body = catalogue_page(n, pages).encode()
            digest.update(body)
            total += len(body)
            with open(f"{out}/catalogue/page-{n}.html", "wb") as f:
                f.write(body)
            paths.write(f"/catalogue/page-{n}.html\n")
    for n in range(1, tiny + 1):
        body = tiny_page(n).encode()
        digest.update(body)
        with open(f"{out}/tiny/{n}.html", "wb") as f:
            f.write(body)
    json.dump(
        {
            "pages": pages,
            "items_per_page": ITEMS_PER_PAGE,
            "page_bytes_mean": round(total / pages) if pages else 0,
            "tiny_pages": tiny,
            "sha256": digest.hexdigest(),
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
