# Shared by bench/run.sh and bench/transports.sh (sourced from the project root): the mode
# flags, installing missing Debian packages, and building the peers rathole and bore once.
#
#   parse_mode "$@"          sets $mode (quick|full) and the array $args (everything else)
#   need_packages TAG CMD:PACKAGE...   installs the packages whose command is missing
#   build_peers TAG          cargo-installs rathole and bore into bench/.cache once

parse_mode() {
    mode=quick
    args=()
    for arg in "$@"; do
        case "$arg" in
            --full) mode=full ;;
            --quick) mode=quick ;;
            *) args+=("$arg") ;;
        esac
    done
}

need_packages() {
    local tag=$1 pair missing=()
    shift
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "[$tag] installing ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

build_peers() {
    local cache=bench/.cache
    if [ ! -x "$cache/bin/rathole" ] || [ ! -x "$cache/bin/bore" ]; then
        echo "[$1] building the peers rathole and bore into $cache (a few minutes, once)" >&2
        cargo install --quiet --root "$cache" rathole bore-cli
    fi
}
