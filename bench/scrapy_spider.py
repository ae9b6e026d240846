"""The Scrapy baseline: the fields gleaner extracts, from the same pages,
walked the same way (each start page followed through "next" for at most
PAGES pages), written as JSON lines by Scrapy's feed export.

    scrapy runspider bench/scrapy_spider.py -a site=URL -a first=I -a count=N \
        -a pages=P -a stats=FILE -O items.jsonl:jsonlines -s CONCURRENT_REQUESTS=64 ...

On close it writes FILE: pages, items and the crawl's own start and end times
(so interpreter start-up is not counted, as gleaner's figure counts runs only).
"""

import json
import re
import time

import scrapy

NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def number(text):
    """The first number in the text, as gleaner's "type": "number" reads it."""
    m = NUMBER.search(text or "")
    return float(m.group().replace(",", "")) if m else None


class Catalogue(scrapy.Spider):
    name = "catalogue"

    def __init__(self, site, first, count, pages, stats, **kwargs):
        super().__init__(**kwargs)
        self.site, self.first, self.count = site, int(first), int(count)
        self.pages, self.stats_file = int(pages), stats
        self.fetched, self.started = 0, None

    async def start(self):
        self.started = time.time()
        for i in range(self.first, self.first + self.count):
            url = f"{self.site}/catalogue/page-{i * self.pages + 1}.html"
            yield scrapy.Request(url, cb_kwargs={"left": self.pages - 1})

    def parse(self, response, left):
        self.fetched += 1
        for p in response.css("article.product"):
            yield {
                "title": p.css("h3 a::attr(title)").get(),
                "price": number(p.css(".price::text").get()),
                "url": response.urljoin(p.css("h3 a::attr(href)").get()),
                "tags": p.css(".tag::text").getall(),
            }
        nxt = response.css("li.next a::attr(href)").get()
        if nxt and left > 0:
            yield response.follow(nxt, cb_kwargs={"left": left - 1})

    def closed(self, reason):
        stats = self.crawler.stats
        with open(self.stats_file, "w") as f:
            json.dump(
                {
                    "reason": reason,
                    "pages": self.fetched,
                    "items": stats.get_value("item_scraped_count", 0),
                    "errors": stats.get_value("log_count/ERROR", 0),
                    "start": self.started,
                    "end": time.time(),
                },
                f,
            )
