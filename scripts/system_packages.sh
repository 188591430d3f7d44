#!/usr/bin/env bash
# System packages that some features need, from Debian's apt:
#   chromium                 the search page's browser tests (Playwright drives /usr/bin/chromium)
#   fonts-noto-color-emoji   the real-picture demo's pictures (configs/emoji.yaml)
#   unicode-cldr-core        the real-picture demo's captions (CLDR names and keywords)
# Installs the missing ones when run as root with apt-get; otherwise says what to install and
# carries on (the tests that need them skip with a reason, and the emoji demo stops with one).
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || missing+=(fonts-noto-color-emoji)
[ -d /usr/share/unicode/cldr/common/annotations ] || missing+=(unicode-cldr-core)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "Installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "Optional system packages missing: ${missing[*]} (sudo apt-get install ${missing[*]})." >&2
fi
