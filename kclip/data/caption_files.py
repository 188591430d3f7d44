"""Parsers for the caption files of kclip.data.layouts: delimited tables and line-based files.

Every bad line becomes a named entry of the SkipReport (counted against max_bad_fraction), never an
exception: a caption over csv's field limit, a quote left open (which would swallow the rest of the
file into one field), a JSON line nested too deeply, and so on. Lines end at "\n" only: the
Unicode line separators str.splitlines also splits at (U+2028, U+0085, ...) may sit inside captions.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from kclip.data import report as skip
from kclip.data.report import SkipReport


def keep_caption(captions: dict[str, list[str]], image: str, caption: str, where: str, report: SkipReport) -> None:
    caption = " ".join(caption.split())
    image = image.strip()
    if "\ufffd" in caption or "\ufffd" in image:
        report.add(where, skip.MALFORMED_LINE, "not valid UTF-8", captions_dropped=1)
    elif not image:
        report.add(where, skip.MALFORMED_LINE, "no image name", captions_dropped=1)
    elif not caption:
        report.add(where, skip.EMPTY_CAPTION, f"image {image}", captions_dropped=1)
    else:
        captions.setdefault(image, []).append(caption)


def read_table(path: Path, image_column: str, caption_column: str, report: SkipReport,
                delimiter: str = ",") -> dict[str, list[str]]:
    """Read a delimited caption file with a header naming the image and caption columns."""
    captions: dict[str, list[str]] = {}
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = [name.strip().lower() for name in next(reader, [])]
        if image_column.lower() not in header or caption_column.lower() not in header:
            raise ValueError(
                f"{path} has columns {header}, but the image column '{image_column}' and caption column "
                f"'{caption_column}' are both required; set image_column=/caption_column= to the right names."
            )
        image_index, caption_index = header.index(image_column.lower()), header.index(caption_column.lower())
        while True:
            first_line = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as error:  # e.g. a field over csv's limit: the reader goes on at the next line
                report.total_captions += 1
                report.add(f"{path.name}:{first_line}", skip.MALFORMED_LINE, str(error), captions_dropped=1)
                continue
            where = f"{path.name}:{first_line}"
            lines = reader.line_num - first_line + 1
            if lines > 1:
                # A quote opened and never closed swallows the lines after it into one field: every one of
                # them is a lost caption, and counts against max_bad_fraction.
                report.total_captions += lines
                report.add(where, skip.MALFORMED_LINE, f"unbalanced quote: lines {first_line}-{reader.line_num} "
                                                       "read as one field", captions_dropped=lines)
                continue
            report.total_captions += 1
            if len(row) < len(header):
                if not any(field.strip() for field in row):
                    report.total_captions -= 1  # a blank line is not a caption
                    continue
                report.add(where, skip.MALFORMED_LINE, f"{len(row)} fields, expected {len(header)}", captions_dropped=1)
                continue
            caption = row[caption_index]
            if len(row) > len(header) and caption_index == len(header) - 1:
                # An unquoted delimiter inside the last column split the caption: join it back.
                caption = delimiter.join(row[caption_index:])
            keep_caption(captions, row[image_index], caption, where, report)
    return captions


def read_lines(path: Path, parse_line, report: SkipReport) -> dict[str, list[str]]:
    """Read a line-based caption file; `parse_line(line, number)` returns [(image, caption), ...]
    or, for a malformed line, a string saying what is wrong with it."""
    captions: dict[str, list[str]] = {}
    # Only "\n" (and "\r\n") end a line: str.splitlines would also split at U+2028, U+0085 and other
    # characters that may sit inside a caption, or a JSON string.
    lines = [line[:-1] if line.endswith("\r") else line
             for line in path.read_text(encoding="utf-8-sig", errors="replace").split("\n")]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where, parsed = f"{path.name}:{number}", parse_line(line, number)
        if isinstance(parsed, str):
            report.total_captions += 1
            report.add(where, skip.MALFORMED_LINE, parsed, captions_dropped=1)
            continue
        for image, caption in parsed:
            report.total_captions += 1
            keep_caption(captions, image, caption, where, report)
    return captions


def parse_token_line(line: str, number: int):
    """Flickr8k.token.txt: "IMG.jpg#N<TAB>caption"."""
    key, tab, caption = line.partition("\t")
    if not tab:
        return "no tab between image#N and caption"
    image, hash_sign, index = key.strip().rpartition("#")
    return [(image if hash_sign and index.isdigit() else key, caption)]


def parse_results_line(line: str, number: int):
    """Kaggle Flickr30k results.csv: "image| number| comment". Split by hand: comments hold stray
    quote characters, which a CSV reader would interpret, and the odd "|", which stays in the comment."""
    if number == 1 and line.lower().startswith("image_name"):
        return []
    fields = line.split("|", 2)
    return [(fields[0], fields[2])] if len(fields) == 3 else "fewer than three '|'-separated fields"


def jsonl_parser(image_column: str, caption_column: str):
    def parse(line: str, number: int):
        try:
            row = json.loads(line)
        except ValueError as error:
            return f"not JSON ({error})"
        except RecursionError:
            return "JSON nested too deeply to read"
        if not (isinstance(row, dict) and image_column in row and caption_column in row):
            return f"needs an object with '{image_column}' and '{caption_column}' keys"
        # One line may carry several captions as a list.
        values = row[caption_column] if isinstance(row[caption_column], list) else [row[caption_column]]
        return [(str(row[image_column]), "" if value is None else str(value)) for value in values]
    return parse
