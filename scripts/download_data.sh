#!/usr/bin/env bash
# Download the DVBPR release files used by AIP (Kang et al., ICDM 2017, linked from
# https://github.com/kang205/DVBPR and hosted by its authors):
#   Amazon Men     AmazonMenWithImgPartitioned.npy  2.1 GB   (datasets.amazon_men)
#   Tradesy.com    TradesyImgPartitioned.npy        3.4 GB   (datasets.tradesy)
# The images are for academic use only. The sisinflab folder datasets (datasets.folder) are not
# downloaded here.
#
# Usage: scripts/download_data.sh [amazon_men|tradesy|all] [DEST_DIR]    (default: all data)
set -euo pipefail

# The authors' host; the file names are the ones the DVBPR and AIP code load.
BASE_URL="http://cseweb.ucsd.edu/~wckang/DVBPR"
AMAZON_MEN_URL="${BASE_URL}/AmazonMenWithImgPartitioned.npy"
TRADESY_URL="${BASE_URL}/TradesyImgPartitioned.npy"

WHICH="${1:-all}"
DEST="${2:-data}"

die() {
    echo "error: $*" >&2
    exit 1
}

is_npy() {  # a complete download starts with NumPy's magic string
    [ -s "$1" ] && [ "$(head -c 6 "$1" | tail -c 5)" = "NUMPY" ]
}

fetch() {
    local url="$1" out="$DEST/$(basename "$1")"
    if is_npy "$out"; then
        echo "$out is already there"
        return
    fi
    mkdir -p "$DEST"
    echo "downloading $url -> $out"
    local ok=0
    if command -v curl >/dev/null 2>&1; then
        curl -fL --retry 3 -C - -o "$out.part" "$url" && ok=1
    elif command -v wget >/dev/null 2>&1; then
        wget -c -O "$out.part" "$url" && ok=1
    else
        die "neither curl nor wget is installed; download $url to $out by hand"
    fi
    if [ "$ok" != 1 ]; then
        die "could not download $url (is the authors' host reachable?); a partial file is kept" \
            "at $out.part and a re-run resumes it; or download it by hand from the links on" \
            "https://github.com/kang205/DVBPR and save it as $out"
    fi
    is_npy "$out.part" || die "$url did not give a .npy file (see $out.part); the host may" \
        "have moved it: download it by hand from https://github.com/kang205/DVBPR as $out"
    mv "$out.part" "$out"
    echo "saved $out"
}

case "$WHICH" in
    amazon_men) fetch "$AMAZON_MEN_URL" ;;
    tradesy) fetch "$TRADESY_URL" ;;
    all)
        fetch "$AMAZON_MEN_URL"
        fetch "$TRADESY_URL"
        ;;
    *) die "unknown dataset '$WHICH'; expected amazon_men, tradesy or all" ;;
esac
