"""Screenshots of the search page of a running tools/serve.py, as in docs/export_and_serving.md.

    python -m scripts.search_page_screenshot --url http://127.0.0.1:8000 --query 红色的外套 \
        --image query.jpg --output docs/images/search_page.png

Drives headless Chromium through chromedriver (the client of tests/webdriver.py): types the query,
then (with --image) uploads the image and searches captions; each view is cut to the page's height
and the views are stacked into one PNG of at most 256 colours, which keeps it small.
"""
import argparse
import io
import os
import shutil
import sys
import tempfile

from PIL import Image

from tests.webdriver import ChromeDriver, Session

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
DONE = "const s = document.body.dataset.state; return (s === 'done' || s === 'error') && s"
PAGE_HEIGHT = "return Math.ceil(document.documentElement.getBoundingClientRect().height) + 24"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    parser.add_argument("--query", required=True, help="a text query, typed into the page")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--image", help="an image file to upload for image -> text (a second view)")
    parser.add_argument("--image-k", type=int, default=4)
    parser.add_argument("--width", type=int, default=1000, help="window width in CSS pixels")
    parser.add_argument("--output", required=True, help="PNG to write")
    return parser.parse_args(argv)


def capture(session, width):
    """The page down to its last result, as a PIL image."""
    session.set_viewport(width, session.run(PAGE_HEIGHT))
    return Image.open(io.BytesIO(session.screenshot())).convert("RGB")


def main(argv=None):
    args = parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("google-chrome")
    driver = ChromeDriver(shutil.which("chromedriver") or "chromedriver")
    views = []
    try:
        with tempfile.TemporaryDirectory() as profile:
            session = Session(driver.url, chromium, [*FLAGS, f"--window-size={args.width},800",
                                                     f"--user-data-dir={profile}"])
            try:
                session.get(f"{args.url}/?k={args.k}")
                session.type(session.find("#q"), args.query)
                session.click(session.find("#search button[type=submit]"))
                session.wait_for(DONE)
                views.append(capture(session, args.width))
                if args.image:
                    session.set_viewport(args.width, 800)
                    session.get(f"{args.url}/?image=upload&target=texts&k={args.image_k}")
                    session.type(session.find("#file"), os.path.abspath(args.image))
                    session.wait_for(DONE)
                    views.append(capture(session, args.width))
            finally:
                session.close()
    finally:
        driver.close()
    gap = 12
    sheet = Image.new("RGB", (max(v.width for v in views), sum(v.height for v in views) + gap * (len(views) - 1)), "#888")
    top = 0
    for view in views:
        sheet.paste(view, (0, top))
        top += view.height + gap
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.output, optimize=True)
    print(f"wrote {args.output}: {sheet.width}x{sheet.height}, {os.path.getsize(args.output) / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
