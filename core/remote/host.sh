# topdeck host-side script: pull a system closure from the binary cache and activate it, with magic rollback.
#
# topdeck sends this file over SSH on stdin (a wrapper saves it under /run/topdeck and runs it; nothing is
# installed). Installed on a host with a timer, `agent` is the unattended pull agent (hosts/topdeck-agent.nix).
#
#   deploy RUN MODE TARGET [options]   pull TARGET (or the pointer's path) and activate it with MODE
#       --cache URL --key NAME:KEY        the substituter and the only key trusted to sign its paths
#       --confirm SECONDS                 switch/test: wait this long for `confirm RUN`, else roll back (0: no wait)
#       --need-kib N                      what the fetch unpacks to (else asked of Nix with --dry-run)
#       --fetch-parallel N                fetch ahead with up to N transfers at once (default 64; 0: Nix fetches)
#       --pointer NAME --sidecar URL --signer 'ssh-ed25519 KEY'
#                                         read TARGET from the signed pointer sidecar (TARGET "-" or the path the
#                                         plan expects); refuse a bad signature or a serial older than the last one
#       --generation N                    switch to the existing system generation N (a rollback); TARGET "-"
#       --on-failed-units rollback|keep   what to do when the switch reports units that failed (exit 4)
#       --specialisation NAME             switch/test: activate TARGET's specialisation NAME (the profile is TARGET)
#       --reboot                          mode boot: then reboot into TARGET, guarded as `reboot` is
#   agent [deploy options]             deploy the pointer if it moved (no confirmation wait)
#   reboot RUN [--confirm SECONDS]     reboot into the boot default; after the boot, topdeck-reboot-guard.service
#                                      waits this long for `confirm RUN`, else returns to the previous system
#                                      (the boot entry back, and a reboot into it)
#   confirm RUN [--check-command CMD] [--check-http URL] [--check-units] [--booted PATH]
#                                      run the health checks, then confirm (or reject) RUN's activation or boot
#   follow RUN [--since-reboot]        print RUN's events from the start (or from its reboot) until its result
#   status | generations               what the host runs; its system generations
#   boot-guard                         at boot, from topdeck-reboot-guard.service: take over a run that rebooted
#   closures PATH                      the closures of the current system (0) and PATH (1): `closure PATH NARSIZE`
#
# Output: tab-separated lines on stdout: `phase NAME [DETAIL]`, `progress PATHS_DONE PATHS_TOTAL BYTES_DONE
# BYTES_TOTAL`, `current PATH`, `log TEXT`, `state KEY VALUE`, and last `result done|failed|rolled-back REASON`.
# Exit status: 0 done, 1 failed, 2 rolled back, 3 another deploy holds the host's lock, 5 rebooting (the result
# comes after the boot: `follow RUN --since-reboot`), 64 bad arguments.
# shellcheck disable=SC3043  # `local`: not POSIX, but dash, bash and busybox sh (every host's sh) have it
set -u
# The host's / : a test's stand-in folder (tests/unit/hoststubs.py) only when it holds the file `topdeck-test-root`,
# so that no environment a login or a unit passes on can move what this script reads and changes on a real host.
ROOT=''
if [ -n "${TOPDECK_HOST_TEST_ROOT:-}" ] && [ -f "$TOPDECK_HOST_TEST_ROOT/topdeck-test-root" ]; then
    ROOT=$TOPDECK_HOST_TEST_ROOT
fi
PATH=$ROOT/run/current-system/sw/bin:$ROOT/nix/var/nix/profiles/default/bin:/usr/local/bin:/usr/bin:/bin:$PATH
export PATH
umask 022

PROFILE=$ROOT/nix/var/nix/profiles/system
STATE=$ROOT/nix/var/nix/topdeck
RUNTIME=$ROOT/run/topdeck
GCROOTS=$ROOT/nix/var/nix/gcroots/topdeck
CURRENT_SYSTEM=$ROOT/run/current-system
BOOTED_SYSTEM=$ROOT/run/booted-system
SYSTEMD_DIR=$ROOT/run/systemd/system  # there when systemd runs the host
# A reboot in progress, kept where it survives the reboot: `pending` (PHASE RUN) starts the guard unit at boot,
# `host.sh` is the script it runs, `run` the run's folder (/run/topdeck/runs/RUN links to it).
REBOOT=$STATE/reboot
GUARD_UNIT=topdeck-reboot-guard.service
REBOOT_WAIT=600  # how long a host that was told to reboot may take to go down
STORE_PATH_RE='^/nix/store/[0-9a-df-np-sv-z]\{32\}-[A-Za-z0-9+._?=-][A-Za-z0-9+._?=-]*$'
TAB=$(printf '\t')
NEWLINE='
'

line() {  # one output line: the arguments tab-separated (no fork: many of these are printed)
    local saved_ifs="$IFS"
    IFS=$TAB
    printf '%s\n' "$*"
    IFS=$saved_ifs
}

one_line() {  # text from a command or a file, with its newlines made spaces
    printf '%s' "$*" | tr '\n\r\t' '   '
}
matches() {  # whether all of $1, a single line, matches the regular expression $2
    case $1 in *"$NEWLINE"*) return 1 ;; esac
    printf '%s\n' "$1" | grep -q "$2"
}
usage() { line result failed "topdeck-host: $*"; exit 64; }

event() {  # record an event for `follow`, and print it
    line "$@" >> "$rundir/events" 2>/dev/null
    line "$@"
}

# The one reader of the JSON this script is given (the pointer's sidecar, the closure's manifest, a B2 error, Nix's
# internal-json log): json_read(TEXT) puts TEXT's members in order into json_key[1..n] and json_value[1..n] (returns
# n), the first value of each name into json[NAME]. Strings are unescaped with tabs, newlines and other escapes made
# spaces (\u001b kept as ESC for colours to be removed); numbers, true, false and null as written; an array of plain
# values as its values joined by ","; the members of nested objects in order, as if they were the outer one's. It stops
# at the first thing that is not JSON, with what it read. Awk functions, so that the log of a fetch is read in one awk.
# shellcheck disable=SC2016  # an awk program: its $ are awk's
JSON_AWK='
function json_unescape(text,   out, at, c) {
    if (!index(text, "\\")) { gsub(/\t/, " ", text); return text }
    out = ""
    for (at = 1; at <= length(text); at++) {
        c = substr(text, at, 1)
        if (c == "\\") {
            at++; c = substr(text, at, 1)
            if (c == "u") { c = substr(text, at + 1, 4) == "001b" ? "\033" : " "; at += 4 }
            else if (c != "\"" && c != "\\" && c != "/") c = " "
        } else if (c == "\t") c = " "
        out = out c
    }
    return out
}
function json_member(name, value) {
    json_count++; json_key[json_count] = name; json_value[json_count] = value
    if (!(name in json)) json[name] = value
}
function json_scalar(value) {  # a string, number or literal where json_read is
    if (!json_depth) return
    if (json_kind[json_depth] == "[") json_list[json_depth] = json_list[json_depth] (json_list[json_depth] == "" ? "" : ",") value
    else if (json_expect_name) { json_name[json_depth] = value; json_expect_name = 0 }
    else json_member(json_name[json_depth], value)
}
function json_read(text,   part, count, at, rest, c, value) {  # split at the quotes: each string is read whole
    json_count = json_depth = json_expect_name = 0; split("", json); split("", json_key); split("", json_value)
    count = split(text, part, "\"")
    for (at = 1; at <= count; at++) {
        rest = part[at]
        while (rest != "") {  # between two strings: the structure, numbers, true, false, null
            c = substr(rest, 1, 1)
            if (c == "{" || c == "[") {
                json_depth++; json_kind[json_depth] = c; json_list[json_depth] = ""; json_expect_name = c == "{"
            } else if (c == "}" || c == "]") {
                if (!json_depth || json_kind[json_depth] != (c == "}" ? "{" : "[")) return json_count
                if (c == "]" && json_depth > 1 && json_kind[json_depth - 1] == "{")
                    json_member(json_name[json_depth - 1], json_list[json_depth])
                json_depth--; json_expect_name = 0
            } else if (c == ",") json_expect_name = json_depth && json_kind[json_depth] == "{"
            else if (match(rest, /^(-?[0-9][0-9.eE+-]*|true|false|null)/)) {
                json_scalar(substr(rest, 1, RLENGTH)); rest = substr(rest, RLENGTH + 1); continue
            } else if (c != ":" && c != " " && c != "\t" && c != "\r" && c != "\n") return json_count
            rest = substr(rest, 2)
        }
        if (at == count) break
        at++; value = part[at]
        while (value ~ /(^|[^\\])(\\\\)*\\$/ && at < count) { at++; value = value "\"" part[at] }  # an escaped quote
        if (at == count) return json_count  # no closing quote
        json_scalar(json_unescape(value))
    }
    return json_count
}'

json_pairs() {  # the members of the JSON text on stdin, a `NAME<TAB>VALUE` line each, as json_read reads them
    awk "$JSON_AWK"'
        { text = text $0 "\n" }
        END { count = json_read(text); for (at = 1; at <= count; at++) printf "%s\t%s\n", json_key[at], json_value[at] }'
}

pair_value() {  # the first value of member $1 in the `json_pairs` lines on stdin
    awk -F "$TAB" -v name="$1" '$1 == name { print substr($0, length(name) + 2); exit }'
}

# --- arguments --------------------------------------------------------------------------------------

cache='' key='' confirm=0 need_kib='' pointer='' sidecar='' signer='' generation='' on_failed_units=rollback specialisation=''
status='' with_reboot='' rebooted=''
lock_wait=180  # how long a switch may wait for SWITCH_LOCK that another process holds (--lock-wait)
check_command='' check_http='' check_units='' booted_check=''
fetch_parallel=64 ahead_url=''
parse_options() {
    while [ $# -gt 0 ]; do
        [ $# -ge 2 ] || [ "$1" = --check-units ] || [ "$1" = --reboot ] || usage "option $1 needs a value"
        case $1 in
            --cache) cache=$2 ;;
            --key) key=$2 ;;
            --confirm) confirm=$2 ;;
            --need-kib) need_kib=$2 ;;
            --fetch-parallel) fetch_parallel=$2 ;;
            --pointer) pointer=$2 ;;
            --sidecar) sidecar=$2 ;;
            --signer) signer=$2 ;;
            --generation) generation=$2 ;;
            --on-failed-units) on_failed_units=$2 ;;
            --lock-wait) lock_wait=$2 ;;
            --specialisation) specialisation=$2 ;;
            --check-command) check_command=$2 ;;
            --check-http) check_http=$2 ;;
            --check-units) check_units=1; shift; continue ;;
            --reboot) with_reboot=1; shift; continue ;;
            --booted) booted_check=$2 ;;
            *) usage "unknown option $1" ;;
        esac
        shift 2
    done
    case $confirm in *[!0-9]* | '') usage "--confirm must be a number of seconds" ;; esac
    case $need_kib in *[!0-9]*) usage "--need-kib must be a number" ;; esac
    case $fetch_parallel in *[!0-9]* | '' | ????*) usage "--fetch-parallel must be a number below 1000" ;; esac
    case $generation in *[!0-9]*) usage "--generation must be a number" ;; esac
    case $pointer in .* | *[!A-Za-z0-9._-]*) usage "bad pointer name" ;; esac
    case $on_failed_units in rollback | keep) ;; *) usage "--on-failed-units must be rollback or keep" ;; esac
    case $lock_wait in *[!0-9]* | '') usage "--lock-wait must be a number of seconds" ;; esac
    case $specialisation in .* | *[!A-Za-z0-9._-]*) usage "bad specialisation name" ;; esac
    [ -z "$booted_check" ] || matches "$booted_check" "$STORE_PATH_RE" || usage "--booted must be a store path"
}

check_run_id() {
    case $1 in '' | *[!A-Za-z0-9_-]*) usage "bad run id" ;; esac
    rundir=$RUNTIME/runs/$1
}

# --- deploy -----------------------------------------------------------------------------------------

fail() {  # before anything changed on the host
    event result failed "$(one_line "$1")"
    record_last_run failed
    exit 1
}

record_last_run() {
    mkdir -p "$STATE" 2>/dev/null || return 0
    printf '%s\t%s\t%s\t%s\n' "$run" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "${target:-}" > "$STATE/last-run.tmp" \
        && mv "$STATE/last-run.tmp" "$STATE/last-run"
}

take_lock() {
    local owner
    if [ "$(id -u)" != 0 ]; then
        line result failed "user $(id -un) is not root here: log in as root, or set sudo = true for this host"
        exit 1
    fi
    mkdir -p "$RUNTIME/runs" || fail "cannot create $RUNTIME"
    command -v flock >/dev/null 2>&1 || fail "flock (util-linux) is missing on this host"
    exec 9>>"$RUNTIME/lock"
    if ! flock -n 9 || unit_alive "$(sed -n 's/^run \([A-Za-z0-9_-]*\) .*/\1/p' "$RUNTIME/lock.owner" 2>/dev/null)"; then
        owner=$(cat "$RUNTIME/lock.owner" 2>/dev/null || true)
        line result failed "another deploy holds this host's lock (${owner:-run unknown}); try again when it ends"
        exit 3
    fi
    printf 'run %s since %s' "$run" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$RUNTIME/lock.owner"
    make_rundir
    event phase lock
}

make_rundir() {  # the folder of a run that reboots the host is kept under /nix, which survives the reboot
    rm -rf "$rundir"
    if [ -z "$with_reboot" ]; then
        mkdir -p "$rundir" || fail "cannot create $rundir"
        return
    fi
    if [ -e "$REBOOT/pending" ]; then
        fail "a reboot of an earlier run is still pending here ($REBOOT/pending: $(one_line "$(cat "$REBOOT/pending")")): reboot the host to let its guard end it: nothing was changed"
    fi
    rm -rf "$REBOOT/run"
    # shellcheck disable=SC2015  # either step failing is the same failure
    mkdir -p "$REBOOT/run" && ln -s "$REBOOT/run" "$rundir" || fail "cannot create $REBOOT/run"
}

sidecar_field() {  # one field of the sidecar
    printf '%s\n' "$sidecar_pairs" | pair_value "$1"
}

has_field() {
    printf '%s\n' "$sidecar_pairs" | cut -f 1 | grep -qxF "$1"
}

# A serial, time or expiry: at most 16 digits and at most 2^53 (as topdeck writes them), checked before any
# arithmetic so that a huge value is one line here, never the shell's "Illegal number".
MAX_SERIAL=9007199254740992
check_number() {  # NAME VALUE
    case $2 in '' | *[!0-9]*) fail "pointer $pointer: the sidecar's $1 is not a number" ;; esac
    # shellcheck disable=SC2015  # either test failing is the same failure
    [ ${#2} -le 16 ] && [ "$2" -le "$MAX_SERIAL" ] || fail "pointer $pointer: the sidecar's $1 is above 2^53"
}

utc() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || printf '%s' "$1"; }

verify_pointer() {
    # sidecar_text, sidecar_pairs, p_name, p_path and p_serial stay global: the pointer's delta (delta_take) reads them
    local twice p_time p_sig p_expires signed last
    event phase verify "pointer $pointer"
    command -v curl >/dev/null 2>&1 || fail "curl is missing on this host (needed to read the pointer)"
    command -v ssh-keygen >/dev/null 2>&1 || fail "ssh-keygen is missing on this host (needed to verify the pointer)"
    sidecar_text=$(curl -fsS --max-time 30 "$sidecar" 2>&1) \
        || fail "cannot read pointer $pointer: $(cache_refusal "$sidecar" || printf '%s' "$sidecar_text")"
    sidecar_pairs=$(printf '%s\n' "$sidecar_text" | json_pairs)
    twice=$(printf '%s\n' "$sidecar_pairs" | cut -f 1 | sort | uniq -d | head -n 1)
    [ -z "$twice" ] || fail "pointer $pointer: the sidecar names a field twice ($(one_line "$twice")): refused"
    p_name=$(sidecar_field name) p_path=$(sidecar_field path) p_serial=$(sidecar_field serial)
    p_time=$(sidecar_field time) p_sig=$(sidecar_field sshsig)
    [ "$p_name" = "$pointer" ] || fail "pointer $pointer: the sidecar names pointer '$p_name'"
    matches "$p_path" "$STORE_PATH_RE" || fail "pointer $pointer: the sidecar's path is not a store path"
    check_number serial "$p_serial"
    check_number time "$p_time"
    case $p_sig in '' | *[!A-Za-z0-9+/=]*) fail "pointer $pointer: the sidecar has no SSH signature" ;; esac
    signed="topdeck-pointer-1;$p_name;$p_path;$p_serial;$p_time"
    p_expires=0
    if has_field expires; then  # a sidecar without it was signed before pointers could expire (v1)
        p_expires=$(sidecar_field expires)
        check_number expires "$p_expires"
        signed="topdeck-pointer-2;$p_name;$p_path;$p_serial;$p_time;$p_expires"
    fi
    printf 'topdeck %s\n' "$signer" > "$rundir/signers"
    printf -- '-----BEGIN SSH SIGNATURE-----\n%s\n-----END SSH SIGNATURE-----\n' "$p_sig" > "$rundir/pointer.sig"
    printf '%s' "$signed" |
        ssh-keygen -Y verify -f "$rundir/signers" -I topdeck -n topdeck-pointer -s "$rundir/pointer.sig" \
            >/dev/null 2>&1 || fail "pointer $pointer: the sidecar's signature does not verify with the trusted key"
    if [ "$p_expires" != 0 ] && [ "$(date +%s)" -ge "$p_expires" ]; then
        fail "pointer $pointer: expired at $(utc "$p_expires") (signed $(utc "$p_time")); publish it again"
    fi
    last=$(cat "$STATE/pointers/$pointer.serial" 2>/dev/null || echo 0)
    case $last in *[!0-9]* | '') last=0 ;; esac
    [ ${#last} -le 16 ] || fail "pointer $pointer: $STATE/pointers/$pointer.serial holds no valid serial: remove it"
    [ "$p_serial" -ge "$last" ] || fail "pointer $pointer: serial $p_serial is older than serial $last, the last this host applied (a replayed or downgraded pointer)"
    check_serial_path "$last"
    if [ "$target" != - ] && [ "$target" != "$p_path" ]; then
        fail "pointer $pointer moved since the plan (now $p_path): plan again"
    fi
    target=$p_path
}

# nix-store -r from the cache only, with its signatures required, no cached miss and no narinfo older than a minute
# trusted. Nix's in-memory narinfo cache obeys the same TTL: at 0, Nix 2.8 fetches each narinfo five times (class B).
realise() {
    nix-store -r "$@" --option substituters "${ahead_url:-$cache}" --option trusted-public-keys "$key" --option require-sigs true \
        --option narinfo-cache-negative-ttl 0 --option narinfo-cache-positive-ttl 60 --option fallback false \
        --option connect-timeout 15
}

cache_refusal() {  # why the cache does not serve $1: no answer, or a refusal (B2 names its daily caps in a 403)
    local answer code b2code
    answer=$(curl -sS --max-time 15 -w '\n%{http_code}' "$1" 2>"$rundir/curl.err") || {
        printf 'no answer from %s (%s)' "$1" "$(one_line "$(cat "$rundir/curl.err")")"
        return 0
    }
    code=$(printf '%s\n' "$answer" | tail -n 1)
    case $code in 2??) return 1 ;; esac
    b2code=$(printf '%s\n' "$answer" | sed '$d' | json_pairs | pair_value code)
    case $b2code in *[!a-z_]*) b2code='' ;; esac
    case $b2code in
        download_cap_exceeded) printf 'the B2 daily download cap is exceeded (HTTP %s %s): raise it in the B2 account' "$code" "$b2code" ;;
        transaction_cap_exceeded) printf 'the B2 daily transaction cap is exceeded (HTTP %s %s): raise it in the B2 account' "$code" "$b2code" ;;
        *) printf 'the cache answers HTTP %s%s for %s' "$code" "${b2code:+ ($b2code)}" "$1" ;;
    esac
}

# A size as `nix-store -r --dry-run` prints it, in KiB rounded up past what its rounding may hide: Nix 2.8 and 2.26
# print "%.2f MiB" whatever the size ("0.00 MiB" for 700 bytes, "5120.00 MiB"); 2.34 the unit that fits, one
# decimal, and KiB also below 1 KiB ("0.7 KiB", "293.0 KiB", "50.0 MiB", "3.0 GiB", "5.0 TiB"). Plain bytes ("512 B",
# "512 bytes") are read too; "?" for anything else. printf "%.0f": Debian 12's mawk clamps "%d" at 2^31 - 1.
# shellcheck disable=SC2016  # an awk program: its $ are awk's
SIZE_AWK='
{
    power = -1
    if ($2 == "B" || $2 == "bytes") power = 0
    else if ($2 ~ /^[KMGTPEZY]iB$/) power = index("KMGTPEZY", substr($2, 1, 1))
    if ($1 !~ /^[0-9]+(\.[0-9]+)?$/ || power < 0) { print "?"; exit }
    decimals = index($1, ".") ? length($1) - index($1, ".") : 0
    unit = 1024 ^ power
    kib = ($1 + 0.5 / 10 ^ decimals) * unit / 1024
    whole = int(kib); if (whole < kib) whole++
    printf "%.0f\n", whole; exit
}'

check_space() {
    local unpacked size_from free_kib
    if [ -z "$need_kib" ]; then
        # "these N paths will be fetched (X download, Y unpacked):", or "this path will be fetched (...)"; no line
        # when nothing is missing. A failing dry run leaves the reason to the fetch itself.
        unpacked=$(realise --dry-run "$target" 2>&1 |
            sed -n 's/.*will be fetched (.* download, \([^)]*\) unpacked).*/\1/p' | head -n 1)
        if [ -n "$unpacked" ]; then
            need_kib=$(printf '%s\n' "$unpacked" | LC_ALL=C awk "$SIZE_AWK")
            size_from="nix-store --dry-run: $unpacked unpacked"
        else
            need_kib=0 size_from="nix-store --dry-run: nothing to fetch"
        fi
    else
        size_from="the plan"
    fi
    free_kib=$(df -Pk "$ROOT/nix/store" | LC_ALL=C awk 'NR == 2 { print $4 }')
    case $need_kib:$free_kib in
        :* | *: | *[!0-9:]*)
            event log "cannot tell whether /nix has room for the fetch (${size_from}; free: ${free_kib:-unknown} KiB): not checked"
            return 0 ;;
    esac
    event log "the fetch needs up to $need_kib KiB on /nix ($size_from), which has $free_kib KiB free"
    if [ "$need_kib" -gt "$free_kib" ]; then
        fail "/nix has $((free_kib / 1024)) MiB free; the fetch needs $(( (need_kib + 1023) / 1024 )) MiB: nothing was changed"
    fi
}

# Nix's internal-json log, turned into progress lines: paths from the copy-paths activity (type 103), bytes from
# the NAR downloads (type 101), the expected download size from its set-expected result (106 with 101). The same
# on Nix 2.8, 2.26 and 2.34 (which print the keys in another order and add "parent"). Warnings and errors (level
# 0 and 1) become log lines: their "msg" string as json_read reads it, without colours (errors add "raw_msg" and
# more keys after it); so do lines that are not JSON (Nix 2.8 prints the warnings of reading its configuration,
# "warning: unknown setting 'x'", before its JSON logger starts). Numbers are printed with "%.0f": Debian 12's
# mawk clamps "%d" at 2^31 - 1.
# shellcheck disable=SC2016  # an awk program: its $ are awk's
PROGRESS_AWK="$JSON_AWK"'
function show() {
    printf "progress\t%.0f\t%.0f\t%.0f\t%.0f\n", paths, total, bytes, expected; fflush(); shown = bytes
}
!/^@nix / { if ($0 != "") { gsub(/\033\[[0-9;]*m/, ""); gsub(/\t/, " "); printf "log\t%s\n", $0; fflush() } next }
{ json_read(substr($0, 6)); type = json["type"] + 0; id = json["id"]; split(json["fields"], f, ",") }
json["action"] == "start" {
    if (type == 103) copies = id
    if (type == 101 && index($0, "/nar/")) nar[id] = 0
    if (type == 100) { printf "current\t%s\n", f[1]; fflush() }
    next
}
json["action"] == "result" {
    if (type == 106 && f[1] == 101) { expected = f[2]; show() }
    else if (type == 105 && id == copies && (f[1] != paths || f[2] != total)) { paths = f[1]; total = f[2]; show() }
    else if (type == 105 && (id in nar)) {
        bytes += f[1] - nar[id]; nar[id] = f[1]
        if (bytes - shown >= 262144 || bytes - shown >= expected / 50) show()
    }
    next
}
json["action"] == "msg" && (("level" in json) ? json["level"] : -1) <= 1 {  # without colours
    text = json["msg"]; gsub(/\033\[[0-9;]*m/, "", text); gsub(/\033/, " ", text); printf "log\t%s\n", text; fflush()
}
END { show() }'

fetch() {
    local status why
    event phase fetch
    delta_fetch && return 0
    fetch_ahead && return 0
    check_space
    { realise "$target" --add-root "$rundir/gcroot" --log-format internal-json -v 2>&1 >/dev/null
      echo $? > "$rundir/fetch.status"; } |
        awk "$PROGRESS_AWK" | tee -a "$rundir/events"
    status=$(cat "$rundir/fetch.status")
    [ "$status" = 0 ] && return 0
    why=$(cache_refusal "$cache/nix-cache-info") || why="nix-store exit $status"
    fail "fetching $target from $cache failed ($why): nothing was changed"
}

# --- the fetch ahead ----------------------------------------------------------------------------------
# Nix asks the cache for one path after another (at 100 ms, Nix 2.8 takes 42 times as long as curl). So the host
# reads the closure's manifest (one request), fetches the missing paths' narinfos and then their NARs itself, many
# at once over kept-alive connections, into a binary cache folder on /nix's own filesystem; then Nix substitutes
# from that folder alone (with the cache as a second substituter, Nix 2.26 and 2.34 still asked it about path after
# path), with the same rules (signatures required, only the cache's key trusted, every NAR's hash checked by Nix):
# nothing here is trusted that Nix would not trust. Whatever fails is logged, and Nix fetches from the cache itself
# as it always did (`fetch`).
AHEAD=$STATE/fetch
NUMBER_RE='^[0-9][0-9]*$'

fetch_ahead() {  # 0: the target is in the store, rooted; 1: not fetched here (the log says why)
    [ "$fetch_parallel" -gt 0 ] || return 1
    local ahead_why='' ahead_bytes=0
    rm -rf "$AHEAD"
    if ahead_fetch && ahead_realise; then
        rm -rf "$AHEAD"
        return 0
    fi
    ahead_url=''
    rm -rf "$AHEAD"
    event log "fetching ahead did not work ($ahead_why): Nix fetches from the cache itself"
    return 1
}

ahead_fetch() {  # the missing paths' narinfos and NARs into $AHEAD, the free space checked first
    local hash total
    command -v curl >/dev/null 2>&1 || { ahead_why="no curl on this host"; return 1; }
    case $cache in
        http://* | https://*) ;;
        *) ahead_why="the cache is no HTTP URL"; return 1 ;;
    esac
    case $cache in *[\"\\\ ]* | *"$TAB"* | *"$NEWLINE"*) ahead_why="the cache URL has quotes or spaces"; return 1 ;; esac
    mkdir -p "$AHEAD/nar" || { ahead_why="cannot make $AHEAD"; return 1; }
    ahead_closure || return 1
    printf 'StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 10\n' > "$AHEAD/nix-cache-info"
    [ -s "$AHEAD/missing" ] || return 0
    sed 's|^/nix/store/\([0-9a-z]*\)-.*|\1|' "$AHEAD/missing" | while read -r hash; do
        printf 'url = "%s/%s.narinfo"\noutput = "%s/%s.narinfo"\n' "$cache" "$hash" "$AHEAD" "$hash"
    done > "$AHEAD/narinfos.curl"
    ahead_curl "$AHEAD/narinfos.curl" | ahead_all_fetched "$(wc -l < "$AHEAD/missing")" \
        || { ahead_why="narinfos: $(ahead_error)"; return 1; }
    ahead_nars || return 1
    ahead_space || return 1
    total=$(wc -l < "$AHEAD/nars")
    awk -v cache="$cache" -v dir="$AHEAD" '{ printf "url = \"%s/%s\"\noutput = \"%s/%s\"\n", cache, $1, dir, $1 }' \
        "$AHEAD/nars" > "$AHEAD/nars.curl"
    ahead_curl "$AHEAD/nars.curl" |
        awk -v total="$total" -v expected="$ahead_bytes" -v status="$AHEAD/curl.status" '
            $1 == "end" { if ($2 != 0) bad++; next }
            { done++; bytes += $2; if ($1 != 0) bad++ }
            done == total || bytes - shown >= expected / 50 || done - count >= total / 50 {
                printf "progress\t%.0f\t%.0f\t%.0f\t%.0f\n", done, total, bytes, expected; fflush(); shown = bytes; count = done
            }
            END { failed = bad || done != total; print failed > status }' | tee -a "$rundir/events"
    [ "$(cat "$AHEAD/curl.status" 2>/dev/null)" = 0 ] || { ahead_why="NARs: $(ahead_error)"; return 1; }
}

ahead_closure() {  # the manifest's paths that this host lacks, into $AHEAD/missing
    local hash
    hash=$(basename "$target" | cut -c 1-32)
    printf 'url = "%s/manifests/%s.json"\noutput = "%s/manifest.json"\n' "$cache" "$hash" "$AHEAD" > "$AHEAD/manifest.curl"
    ahead_curl "$AHEAD/manifest.curl" | ahead_all_fetched 1 || { ahead_why="the manifest: $(ahead_error)"; return 1; }
    json_pairs < "$AHEAD/manifest.json" | awk -F "$TAB" '$1 == "path" { print $2 }' > "$AHEAD/closure"
    if grep -v "$STORE_PATH_RE" "$AHEAD/closure" | grep -q .; then
        ahead_why="the manifest names something that is no store path"
        return 1
    fi
    grep -qxF "$target" "$AHEAD/closure" || { ahead_why="the manifest does not name $target"; return 1; }
    xargs nix-store --check-validity --print-invalid < "$AHEAD/closure" > "$AHEAD/missing" 2>"$AHEAD/nix.err" \
        || { ahead_why="nix-store --check-validity: $(one_line "$(cat "$AHEAD/nix.err")")"; return 1; }
}

ahead_nars() {  # each missing path's NAR (URL FileSize NarSize), read from its narinfo, into $AHEAD/nars
    # shellcheck disable=SC2016  # an awk program: its $ are awk's
    awk -F ': ' '
        function out() {
            if (url !~ /^nar\/[0-9a-z:]+\.nar(\.[a-z0-9]+)?$/ || file !~ /^[0-9]+$/ || nar !~ /^[0-9]+$/ \
                || length(file) > 15 || length(nar) > 15) bad = 1
            else print url, file, nar
        }
        FNR == 1 { if (NR > 1) out(); url = file = nar = "" }
        $1 == "URL" && url == "" { url = $2 }
        $1 == "FileSize" && file == "" { file = $2 }
        $1 == "NarSize" && nar == "" { nar = $2 }
        END { if (NR) out(); exit bad }' "$AHEAD"/*.narinfo > "$AHEAD/nars" \
        || { ahead_why="a narinfo has no NAR URL or sizes this host reads"; return 1; }
    [ "$(wc -l < "$AHEAD/nars")" = "$(wc -l < "$AHEAD/missing")" ] \
        || { ahead_why="the narinfos do not match the missing paths"; return 1; }
}

ahead_space() {  # the folder and what Nix unpacks from it must both fit on /nix
    local sizes need free_kib
    sizes=$(awk '{ file += $2; nar += $3 } END { printf "%.0f %.0f\n", file, nar }' "$AHEAD/nars")
    ahead_bytes=${sizes% *}
    need=$(( (ahead_bytes + ${sizes#* }) / 1024 + 1 ))
    free_kib=$(df -Pk "$ROOT/nix/store" | LC_ALL=C awk 'NR == 2 { print $4 }')
    matches "$free_kib" "$NUMBER_RE" || { ahead_why="cannot tell what /nix has free"; return 1; }
    event log "the fetch needs up to $need KiB on /nix (the fetched folder and what Nix unpacks from it), which has $free_kib KiB free"
    [ "$need" -le "$free_kib" ] || { ahead_why="/nix has too little room for the folder besides the unpacked paths"; return 1; }
}

# Every transfer of curl config $1 at once (up to $fetch_parallel): a line for each (its exit code and bytes), then
# `end` and curl's status. Each transfer's own code counts: in parallel mode, curl's status may be another one's.
ahead_curl() {
    curl --parallel --parallel-max "$fetch_parallel" --fail --silent --no-progress-meter --show-error --connect-timeout 15 \
        --speed-limit 1 --speed-time 60 --write-out '%{exitcode} %{size_download}\n' --config "$1" 2>>"$AHEAD/curl.err"
    echo "end $?"
}

ahead_all_fetched() {  # whether the lines of `ahead_curl` on stdin say that all $1 transfers worked
    awk -v count="$1" '$1 == "end" { status = $2; next } { n++; if ($1 != 0) bad++ } END { exit !(status == 0 && n == count && !bad) }'
}

ahead_error() { one_line "$(tail -n 3 "$AHEAD/curl.err" 2>/dev/null)"; }

ahead_realise() {  # Nix substitutes from the folder; its progress keeps the bytes fetched above
    local ahead_status
    ahead_url="file://$AHEAD"
    { realise "$target" --add-root "$rundir/gcroot" --log-format internal-json -v 2>&1 >/dev/null
      echo $? > "$AHEAD/nix.status"; } |
        awk "$PROGRESS_AWK" |
        awk -F "$TAB" -v OFS="$TAB" -v bytes="$ahead_bytes" '$1 == "progress" { $4 = bytes; $5 = bytes } { print; fflush() }' |
        tee -a "$rundir/events"
    ahead_url=''
    ahead_status=$(cat "$AHEAD/nix.status")
    [ "$ahead_status" = 0 ] || { ahead_why="nix-store exit $ahead_status substituting from the fetched folder"; return 1; }
}

# --- the delta -----------------------------------------------------------------------------------------
# A pointer that moved can name a delta object (core/cache/delta.py): what its target adds to the closure of the system it
# named before, each path's narinfo and NAR, in one tar. A host that runs that system fetches it with one request
# into the fetch-ahead folder, and Nix substitutes from there as after fetching ahead (signatures required, only the
# cache's key trusted, every NAR's hash checked). The delta's fields are signed on their own, bound to the pointer's
# name, path and serial; its sha256 is checked before tar reads it, and tar may write only a binary cache folder's
# files. Whatever fails, the host fetches path by path (`fetch_ahead`), then as Nix does (`fetch`).
DELTA_MEMBER_RE='^[0-9a-df-np-sv-z]\{32\}\.narinfo$\|^nar/[0-9a-z:][0-9a-z:]*\.nar\(\.[a-z0-9][a-z0-9]*\)\{0,1\}$'

delta_fetch() {  # 0: the target is in the store, rooted, from the delta; 1: not (the log says why)
    [ "$fetch_parallel" -gt 0 ] && [ -n "$pointer" ] && [ -n "${sidecar_text:-}" ] || return 1
    has_field delta || return 1
    delta_why='' ahead_why='' ahead_bytes=0
    delta_take || return 1
    rm -rf "$AHEAD"
    if delta_download && delta_unpack && ahead_realise; then
        rm -rf "$AHEAD"
        return 0
    fi
    ahead_url=''
    rm -rf "$AHEAD"
    event log "the delta did not work (${delta_why:-$ahead_why}): fetching path by path"
    return 1
}

delta_take() {  # whether this host takes the pointer's delta: its signature verifies and the host runs its source
    d_field=$(sidecar_field delta) d_sig=$(sidecar_field delta_sshsig)
    d_source=${d_field%% *} d_rest=${d_field#* }
    d_sha=${d_rest%% *} d_size=${d_rest#* }
    if ! matches "$d_source" "$STORE_PATH_RE" || ! matches "$d_sha" '^[0-9a-f]\{64\}$' \
        || ! matches "$d_size" "$NUMBER_RE" || [ ${#d_size} -gt 15 ]; then
        event log "the pointer's delta is not 'SOURCE SHA256 SIZE': fetching path by path"
        return 1
    fi
    d_current=$(readlink -f /run/current-system 2>/dev/null || true)
    if [ "$d_current" != "$d_source" ]; then
        d_runs=${d_current#/nix/store/}
        event log "the pointer's delta is from ${d_source#/nix/store/}, this host runs ${d_runs:-no system}: fetching path by path"
        return 1
    fi
    case $d_sig in '' | *[!A-Za-z0-9+/=]*) event log "the pointer's delta has no SSH signature: fetching path by path"; return 1 ;; esac
    printf -- '-----BEGIN SSH SIGNATURE-----\n%s\n-----END SSH SIGNATURE-----\n' "$d_sig" > "$rundir/delta.sig"
    if ! printf '%s' "topdeck-delta-1;$p_name;$p_path;$p_serial;$d_source;$d_sha;$d_size" |
        ssh-keygen -Y verify -f "$rundir/signers" -I topdeck -n topdeck-pointer -s "$rundir/delta.sig" >/dev/null 2>&1; then
        event log "the pointer's delta: its signature does not verify with the trusted key: fetching path by path"
        return 1
    fi
}

delta_download() {  # the delta into $AHEAD/delta.tar: its signed size and sha256, room for it and its files first
    case $cache in http://* | https://*) ;; *) delta_why="the cache is no HTTP URL"; return 1 ;; esac
    mkdir -p "$AHEAD/nar" || { delta_why="cannot make $AHEAD"; return 1; }
    free_kib=$(df -Pk /nix/store | LC_ALL=C awk 'NR == 2 { print $4 }')
    matches "$free_kib" "$NUMBER_RE" || { delta_why="cannot tell what /nix has free"; return 1; }
    [ $((d_size / 512 + 1)) -le "$free_kib" ] || { delta_why="/nix has too little room for the delta and its files"; return 1; }
    d_url="$cache/deltas/$(basename "$d_source" | cut -c 1-32)-$(basename "$target" | cut -c 1-32).tar"
    event log "fetching the delta from ${d_source#/nix/store/}: $d_size bytes, one request"
    curl -fsS --connect-timeout 15 --speed-limit 1 --speed-time 60 --max-filesize "$d_size" -o "$AHEAD/delta.tar" \
        "$d_url" 2>"$AHEAD/curl.err" || { delta_why="fetching it: $(ahead_error)"; return 1; }
    [ "$(wc -c < "$AHEAD/delta.tar")" = "$d_size" ] || { delta_why="it is not the size its pointer signed"; return 1; }
    sum=$(sha256sum "$AHEAD/delta.tar" | cut -c 1-64)
    [ "$sum" = "$d_sha" ] || { delta_why="its sha256 is not the one its pointer signed"; return 1; }
}

delta_unpack() {  # the delta's narinfos and NARs into $AHEAD, as a binary cache folder; the paths in $AHEAD/missing
    tar -tvf "$AHEAD/delta.tar" > "$AHEAD/delta.list" 2>"$AHEAD/tar.err" || { delta_why="not a tar file"; return 1; }
    tar -tf "$AHEAD/delta.tar" > "$AHEAD/delta.names" 2>>"$AHEAD/tar.err" || { delta_why="not a tar file"; return 1; }
    if grep -qv '^-' "$AHEAD/delta.list" || grep -v "$DELTA_MEMBER_RE" "$AHEAD/delta.names" | grep -q . \
        || sort "$AHEAD/delta.names" | uniq -d | grep -q .; then
        delta_why="it holds something else than a binary cache folder's files"
        return 1
    fi
    (cd "$AHEAD" && tar -xof delta.tar) 2>>"$AHEAD/tar.err" || { delta_why="tar: $(one_line "$(tail -n 2 "$AHEAD/tar.err")")"; return 1; }
    rm -f "$AHEAD/delta.tar" "$AHEAD/delta.list" "$AHEAD/delta.names"
    printf 'StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 10\n' > "$AHEAD/nix-cache-info"
    : > "$AHEAD/missing"
    [ -n "$(find "$AHEAD" -maxdepth 1 -name '*.narinfo' | head -n 1)" ] || return 0
    sed -n 's/^StorePath: //p' "$AHEAD"/*.narinfo > "$AHEAD/missing"
    ahead_nars || { delta_why=$ahead_why; return 1; }
    ahead_space || { delta_why=$ahead_why; return 1; }
}

generation_of() {  # the generation number a profile link names
    local link
    link=$(readlink "$1" 2>/dev/null) || { echo 0; return; }
    link=${link#system-}
    echo "${link%-link}"
}

save_previous() {
    prev_current=$(readlink -f "$CURRENT_SYSTEM" 2>/dev/null || true)
    prev_gen=$(generation_of "$PROFILE")
    prev_profile=$(readlink -f "$PROFILE" 2>/dev/null || true)
    event state before "$prev_current"
    # The system to return to stays alive (a GC root) for as long as this run may return to it.
    if [ -n "$prev_current" ] && mkdir -p "$GCROOTS" 2>/dev/null; then ln -sfn "$prev_current" "$GCROOTS/$run"; fi
    save_failed_units
}

save_failed_units() {  # what failed before the change, so that a check counts only what fails since
    if command -v systemctl >/dev/null 2>&1; then
        systemctl --failed --no-legend --plain 2>/dev/null | awk '{ print $1 }' | sort > "$rundir/failed-units.before"
    fi
}

set_profile() {
    new_gen=$prev_gen created=
    case $mode in switch | boot) ;; *) return ;; esac
    event phase profile
    if [ -n "$generation" ]; then
        nix-env -p "$PROFILE" --switch-generation "$generation" >/dev/null 2>&1 || fail "cannot switch the profile to generation $generation"
    else
        nix-env -p "$PROFILE" --set "$target" >/dev/null 2>&1 || fail "cannot set the system profile to $target"
        created=1
    fi
    new_gen=$(generation_of "$PROFILE")
    event state generation "$new_gen"
}

# Everything activate() needs, for the detached process; every value here was validated above.
write_run_env() {
    cat > "$rundir/env" <<EOF
run='$run' mode='$mode' target='$target' confirm='$confirm' pointer='$pointer' p_serial='${p_serial:-}'
prev_current='$prev_current' prev_gen='$prev_gen' prev_profile='$prev_profile' new_gen='$new_gen' created='$created'
on_failed_units='$on_failed_units' specialisation='$specialisation' with_reboot='$with_reboot'
lock_wait='$lock_wait'
EOF
}

deploy() {
    [ $# -ge 3 ] || usage "deploy RUN MODE TARGET [options]"
    run=$1 mode=$2 target=$3
    shift 3
    check_run_id "$run"
    case $mode in switch | boot | test | dry-activate) ;; *) usage "mode must be switch, boot, test or dry-activate" ;; esac
    parse_options "$@"
    case $specialisation:$mode in ?*:boot | ?*:dry-activate) usage "--specialisation works with switch and test only" ;; esac
    [ "$target" = - ] || matches "$target" "$STORE_PATH_RE" || usage "TARGET is not a store path"
    if [ -n "$with_reboot" ]; then
        [ "$mode" = boot ] || usage "--reboot goes with mode boot"
        check_can_reboot
    fi
    take_lock
    if [ -n "$generation" ]; then
        target=$(readlink -f "$PROFILE-$generation-link" 2>/dev/null) \
            || fail "this host has no system generation $generation"
    elif [ -n "$pointer" ]; then
        verify_pointer
    fi
    [ "$target" != - ] || usage "no TARGET and no --pointer"
    event state target "$target"
    if [ -z "$generation" ] && already_there; then
        record_pointer_serial
        record_last_run "done"
        event result "done" "already running $target: nothing to do"
        exit 0
    fi
    if [ -z "$generation" ]; then fetch; fi
    nix-store --check-validity "$target" 2>/dev/null || fail "$target is not complete on this host: nothing was changed"
    # The last moment to stop with nothing changed: when topdeck is gone (killed, its connection closed) this
    # line cannot be written, and the script ends here (by SIGPIPE, or by printf's error where it is ignored).
    check_system
    check_switch_lock
    event state fetched "$target" || fail "topdeck's session ended before the change: nothing was changed"
    # From here on the host changes: a dropped connection or a stop must not leave it half-way.
    trap '' HUP INT TERM PIPE
    save_previous
    set_profile
    write_run_env
    cp "$0" "$rundir/host.sh"
    detach_and_follow activate
}

check_system() {  # what nixos-rebuild checks before it sets the profile, and what the activation needs
    [ -e "$target/nixos-version" ] || fail "$target is not a NixOS system (it has no nixos-version): nothing was changed"
    if [ -n "$specialisation" ]; then
        [ -e "$target/specialisation/$specialisation" ] \
            || fail "$target has no specialisation '$specialisation': nothing was changed"
    fi
    [ -x "$(switch_program)" ] || fail "$(switch_program) is missing or not executable: nothing was changed"
}

# What the mode activates: TARGET, or (switch, test) its specialisation; the profile is TARGET either way.
activated() {
    case $specialisation:$mode in
        :* | *:boot | *:dry-activate) printf '%s' "$target" ;;
        *) printf '%s/specialisation/%s' "$target" "$specialisation" ;;
    esac
}

switch_program() { printf '%s/bin/switch-to-configuration' "$(activated)"; }

# NixOS's switch-to-configuration takes an exclusive flock on this file and refuses to run while it is held.
SWITCH_LOCK=$ROOT/run/nixos/switch-to-configuration.lock

check_switch_lock() {  # another switch running (nixos-rebuild, autoUpgrade) or a process left holding its lock
    local holder command
    [ -e "$SWITCH_LOCK" ] || return 0
    command -v flock >/dev/null 2>&1 || return 0
    flock -n "$SWITCH_LOCK" true 2>/dev/null && return 0
    holder=$(lock_holder "$SWITCH_LOCK")
    command=$(command_of "$holder")
    if is_switch "$holder"; then
        fail "busy: another switch holds $SWITCH_LOCK (pid $holder: $command); try again when it ends: nothing was changed"
    fi
    fail "stale switch lock: $SWITCH_LOCK is held by ${holder:+pid $holder (${command:-unknown}), }which is not a switch (left by an interrupted one?); stop that process once you know it is not activating, then deploy again: nothing was changed"
}

lock_holder() {  # a process that has file $1 open (but $2 and what it started): a switch if one does (/proc/locks
    # names the process that took a flock, which may have ended since, like `flock FD` in a script; the lock stays
    # with whoever holds the file)
    # A process whose fdinfo lists the lock holds it; one that only has the file open (a switch waiting for it, or
    # what a switch left running) is named only when no holder can be seen.
    local found='' holder='' fd pid file
    # A process in another mount namespace may have a file of the same name open (another container's switch):
    # only the same file counts, by device and inode.
    file=$(stat -L -c '%d:%i' "$1" 2>/dev/null) || file=
    # shellcheck disable=SC2044 # the paths are /proc/PID/fd/N, without spaces
    for fd in $(find /proc/[0-9]*/fd -mindepth 1 -maxdepth 1 -lname "$1" 2>/dev/null); do
        pid=${fd#/proc/}
        pid=${pid%%/*}
        [ "$pid" != $$ ] || continue
        [ -z "$file" ] || [ "$(stat -L -c '%d:%i' "$fd" 2>/dev/null)" = "$file" ] || continue
        if [ -n "${2:-}" ] && descends_from "$pid" "$2"; then continue; fi
        if grep -q '^lock:' "/proc/$pid/fdinfo/${fd##*/}" 2>/dev/null; then
            if is_switch "$pid"; then echo "$pid"; return 0; fi
            holder=${holder:-$pid}
        elif [ -z "$found" ] || { ! is_switch "$found" && is_switch "$pid"; }; then
            found=$pid
        fi
    done
    if [ -n "$holder" ]; then echo "$holder"; elif [ -n "$found" ]; then echo "$found"; fi
}

is_switch() {  # whether process $1 is a switch-to-configuration: its executable, its argv[0], or the script it runs
    # (the kernel names a process after the file it executed, cut to 15 characters, a script's too), never merely
    # a command line that names the lock file
    local exe argv0 comm
    [ -n "$1" ] || return 1
    exe=$(readlink "/proc/$1/exe" 2>/dev/null) || exe=
    argv0=$(tr '\0' '\n' < "/proc/$1/cmdline" 2>/dev/null | head -n 1)
    comm=$(cat "/proc/$1/comm" 2>/dev/null) || comm=
    case ${exe##*/}/${argv0##*/}/$comm in
        switch-to-configuration/* | */switch-to-configuration/* | */switch-to-confi) return 0 ;;
    esac
    return 1
}

command_of() {  # process $1's command line, on one line, cut to 120 characters
    tr '\0\t\n\r' '    ' < "/proc/$1/cmdline" 2>/dev/null | cut -c 1-120 | sed 's/ *$//'
}

descends_from() {  # whether process $1 is $2 or was started by it (or by what it started)
    local ancestor="$1" depth=0 stat
    while [ "$depth" -lt 32 ]; do
        [ "$ancestor" != "$2" ] || return 0
        case $ancestor in '' | 0 | 1) return 1 ;; esac
        stat=$(cat "/proc/$ancestor/stat" 2>/dev/null) || return 1
        stat=${stat##*) }  # after the command's name: the state, then the parent's pid
        stat=${stat#* }
        ancestor=${stat%% *}
        depth=$((depth + 1))
    done
    return 1
}

# Run `host.sh VERB RUN` detached from the SSH session. Where systemd runs, as a transient unit of its own (as
# nixos-rebuild runs switch-to-configuration): logind's KillUserProcesses, the session's end or an sshd restart
# cannot reach it, and its output stays in the journal. Elsewhere in a session of its own, which inherits the
# host's lock (fd 9). A unit cannot inherit it: the run's `unit` file names the unit that takes the lock over
# (`take_over`), and the run is alive while its lock is held or that unit is active (`run_alive`).
detach() {
    if [ -d "$SYSTEMD_DIR" ] && command -v systemd-run >/dev/null 2>&1; then
        printf 'topdeck-%s-%s\n' "$1" "$run" > "$rundir/unit"
        if systemd-run --unit="topdeck-$1-$run" --description="topdeck $1 of run $run" --collect \
            --no-ask-password --quiet --service-type=exec --setenv=NIXOS_INSTALL_BOOTLOADER=0 \
            --setenv=TOPDECK_DETACHED=unit /bin/sh "$rundir/host.sh" "$1" "$run" \
            < /dev/null >> "$rundir/activate.log" 2>&1; then
            exec 9>&-
            return 0
        fi
        rm -f "$rundir/unit"
        event log "systemd-run failed (see $rundir/activate.log); running $1 in a session of its own instead"
    fi
    TOPDECK_DETACHED=session NIXOS_INSTALL_BOOTLOADER=0 setsid sh "$rundir/host.sh" "$1" "$run" \
        < /dev/null >> "$rundir/activate.log" 2>&1 &
}

detach_and_follow() {  # detach step $1 and print its events: counted first, as the step may write them at once
    local seen_before
    seen_before=$(wc -l < "$rundir/events")
    detach "$1"
    follow_events "$run" "$seen_before"
}

take_over() {  # in the unit `detach` started for step $1: hold the host's lock for the run from now on
    if [ "${TOPDECK_DETACHED:-}" != unit ]; then return 0; fi  # a session of its own inherited the lock
    # Another unit named: systemd-run reported a failure yet started this one, and a session runs the step.
    [ "$(cat "$rundir/unit" 2>/dev/null)" = "topdeck-$1-$run" ] || exit 0
    exec 9>>"$RUNTIME/lock"
    if ! flock -w 60 9; then
        event result failed "could not take over the host's lock from the deploy within 60 s"
        exit 1
    fi
}

unit_alive() {  # whether the unit that runs (or takes the lock over for) run $1 is active
    local unit
    unit=$(cat "$RUNTIME/runs/$1/unit" 2>/dev/null) && [ -n "$unit" ] && systemctl is-active --quiet "$unit" 2>/dev/null
}

# --- the detached part: activate, wait for confirmation, roll back ------------------------------------

activate() {
    check_run_id "$1"
    run=$1
    # shellcheck source=/dev/null  # the run's env file, written by `start` at run time
    . "$rundir/env"
    take_over activate
    [ -d "$SYSTEMD_DIR" ] || exec > /dev/null  # under systemd, the unit's output goes to the journal
    event phase activate "$mode"
    run_switch
    event state switch-code "$status"
    outcome_of_switch
    if [ -n "$with_reboot" ]; then reboot_into "$target is the boot default, but the host did not reboot"; fi
    if [ "$confirm" -gt 0 ] && { [ "$mode" = switch ] || [ "$mode" = test ]; }; then
        printf '%s\n' "$note" > "$rundir/note"
        detach watch
        exit 0
    fi
    finish "done" "$note"
}

run_switch() {  # the switch's whole output into the run's log and the journal; its status in $status
    local switch_pid
    gave_up=
    rm -f "$rundir/switch.status"
    { "$(switch_program)" "$mode" > "$rundir/switch.log" 2>&1; echo $? > "$rundir/switch.status"; } &
    switch_pid=$!
    follow_switch_lock "$switch_pid"
    wait "$switch_pid"
    status=$(cat "$rundir/switch.status" 2>/dev/null) || status=137  # stopped while it waited
    tee -a "$rundir/activate.log" < "$rundir/switch.log"
    switch_words
}

# A switch that waits for SWITCH_LOCK (ng of 2024 and the Perl switch do; current ng exits 11 at once) while another
# process holds it, taken after check_switch_lock: shown as the phase switch-lock, and stopped after lock_wait seconds.
follow_switch_lock() {
    local waiting='' deadline=0 looks=0 tick=0 holder
    while [ ! -e "$rundir/switch.status" ] && kill -0 "$1" 2>/dev/null; do
        sleep 0.1  # the switch's end is seen within 0.1 s; the lock is looked at every 0.5 s
        tick=$((tick + 1))
        [ $((tick % 5)) = 0 ] || continue
        if holder=$(switch_waits "$1"); then
            looks=$((looks + 1))  # twice in a row: a switch that fails at once (exit 11) is not waiting
            if [ -z "$waiting" ] && [ "$looks" -ge 2 ]; then
                waiting=$(held_by "$holder")
                deadline=$(( $(date +%s) + lock_wait ))
                event phase switch-lock "$waiting"
            elif [ -n "$waiting" ] && [ "$(date +%s)" -ge "$deadline" ]; then
                stop_switch "$1"
                gave_up=$waiting
                return 0
            fi
        else
            looks=0
            if [ -n "$waiting" ]; then
                waiting=''
                event phase activate "$mode"
            fi
        fi
    done
    if [ -n "$waiting" ]; then event phase activate "$mode"; fi  # it got the lock, and ended before the next look
}

held_by() {  # who holds the switch lock, for the operator: process $1
    if [ -z "$1" ]; then printf 'a process that could not be named'; return 0; fi
    if is_switch "$1"; then printf 'another switch, pid %s (%s)' "$1" "$(command_of "$1")"; return 0; fi
    printf 'pid %s (%s), which is not a switch' "$1" "$(command_of "$1")"
}

switch_waits() {  # whether switch $1 waits for SWITCH_LOCK: it (or what it started) has the file open, and a process
    # outside it holds the lock (its fdinfo lists the lock: /proc/locks hides a lock whose taker ended, in a container);
    # prints the holder's pid
    local held_by_other='' opened='' fd pid locked
    # shellcheck disable=SC2044 # the paths are /proc/PID/fd/N, without spaces
    for fd in $(find /proc/[0-9]*/fd -mindepth 1 -maxdepth 1 -lname "$SWITCH_LOCK" 2>/dev/null); do
        pid=${fd#/proc/}
        pid=${pid%%/*}
        [ "$pid" != $$ ] || continue
        locked=''
        if grep -q '^lock:' "/proc/$pid/fdinfo/${fd##*/}" 2>/dev/null; then locked=1; fi
        if descends_from "$pid" "$1"; then
            [ -z "$locked" ] || return 1  # the switch has the lock
            opened=1
        elif [ -n "$locked" ]; then
            held_by_other=${held_by_other:-$pid}
        fi
    done
    [ -n "$opened" ] && [ -n "$held_by_other" ] || return 1
    echo "$held_by_other"
}

descendants() {  # the processes that process $1 started, and theirs
    local child
    # shellcheck disable=SC2013 # pids, one word each
    for child in $(cat "/proc/$1/task/"*/children 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

stop_switch() {  # end switch $1, which waits for the lock and so has done nothing, and what it started (KILL: the
    # deploy ignores TERM from the profile on, and what it starts outside systemd inherits that)
    # shellcheck disable=SC2046 # one argument per process
    kill -KILL "$1" $(descendants "$1") 2>/dev/null
}

# ng's own words first (what it stops, starts, restarts; what failed; why it needs a reboot), then the last lines of
# the rest (often the journal's); its whole output stays in the run's activate.log.
SWITCH_WORDS='^(would )?(stopping|starting|restarting|reloading|NOT restarting) the following|^the following new units were started|^warning: the following units failed|^Failed to run activate script|^Failed to install bootloader|^Pre-switch checks failed|^Could not acquire lock|^Error: |^Warning: the new NixOS configuration|^incompatible with the current configuration|^won.t take effect until you reboot'

switch_words() {
    local text
    { grep -E "$SWITCH_WORDS" "$rundir/switch.log" | head -n 20; grep -Ev "$SWITCH_WORDS" "$rundir/switch.log" | tail -n 5; } \
        | tr '\t\r' '  ' | while IFS= read -r text; do event log "$text"; done
}

failed_units_words() {  # ng's line naming the units that failed, if it printed one
    grep -m 1 '^warning: the following units failed' "$rundir/switch.log" 2>/dev/null | tr '\t\r' '  ' | cut -c 1-300
}

# A dry run changes nothing, so it never rolls back: 100 says the system would need a reboot.
dry_run_outcome() {
    case $status in
        0) finish "done" "dry run of $target: nothing was changed" ;;
        100) finish "done" "this system would need a reboot (its init differs from the running one's): $target; a dry run, nothing was changed" ;;
        *) finish failed "the dry run of $target failed (switch-to-configuration dry-activate exit $status): nothing was changed" ;;
    esac
}

# What switch-to-configuration's exit status means (switch-to-configuration-ng): 0 activated; 100 the new init is
# incompatible: the bootloader has the new system, nothing was activated; 4 units failed (it is activated); 2 the
# activation script failed; 11 (EWOULDBLOCK) another switch holds its lock, nothing was done; others: it failed.
outcome_of_switch() {
    note="$mode of $target"
    if [ -n "$gave_up" ]; then
        restore_profile
        finish failed "the switch waited ${lock_wait} s for $SWITCH_LOCK, held by $gave_up; stopped it: nothing was activated, the profile is back"
    fi
    if [ "$mode" = dry-activate ]; then dry_run_outcome; fi
    case $status in
        0) ;;
        100)
            case $mode in
                switch | boot) finish "done" "installed $target as the boot default; it takes effect after a reboot (its init is incompatible with the running one, so nothing was activated)" ;;
                *) revert "$target cannot be activated without a reboot (its init is incompatible with the running one): deploy it with --mode boot and reboot" ;;
            esac ;;
        4)
            if [ "$on_failed_units" = keep ]; then
                note="$mode of $target; units failed to start (kept, as deploy.on_failed_units says)$(failed_units_words | sed 's/^/: /')"
                event log "units failed to start; keeping the new system (on_failed_units = keep)"
            else
                revert "units failed to start after activating $target (switch-to-configuration exit 4)$(failed_units_words | sed 's/^/: /')"
            fi ;;
        2) revert "the activation script of $target failed (switch-to-configuration exit 2)" ;;
        11) revert "another switch holds $SWITCH_LOCK, so nothing was activated (switch-to-configuration exit 11)" ;;
        *) revert "activating $target failed (switch-to-configuration $mode exit $status)" ;;
    esac
}

watch() {  # the magic-rollback watcher, detached like the activation: confirm in time, or return
    check_run_id "$1"
    run=$1
    # shellcheck source=/dev/null  # the run's env file, written by `start` at run time
    . "$rundir/env"
    take_over watch
    [ -d "$SYSTEMD_DIR" ] || exec > /dev/null
    await_confirmation
    finish "done" "$(cat "$rundir/note" 2>/dev/null || printf '%s of %s' "$mode" "$target")"
}

await_confirmation() {
    local deadline
    : > "$rundir/canary"
    event phase confirm "$confirm"
    deadline=$(( $(date +%s) + confirm ))
    while [ -e "$rundir/canary" ] && [ ! -e "$rundir/reject" ] && [ "$(date +%s)" -lt "$deadline" ]; do
        sleep 0.2
    done
    # The rename decides a race with a late confirmation: whoever moves the canary first wins.
    if mv "$rundir/canary" "$rundir/canary.expired" 2>/dev/null; then
        if [ -e "$rundir/reject" ]; then
            revert "a health check failed: $(cat "$rundir/reject")"
        fi
        revert "no confirmation within ${confirm}s (a new SSH login could not confirm)"
    fi
    event phase confirmed
}

revert() {
    if [ -n "$rebooted" ]; then return_to_previous "$1"; fi
    event phase rollback "$1"
    if [ "$status" = 11 ] && [ "$mode" != test ]; then  # the switch refused to start: only the profile moved
        restore_profile
        finish failed "$1"
    fi
    case $mode in
        switch | boot)
            if [ -z "$prev_profile" ]; then finish failed "$1; there is no previous generation to return to"; fi
            restore_profile
            reactivate "$prev_profile" boot
            if [ "$mode" = switch ]; then reactivate "$prev_current" test; fi
            ;;
        test) reactivate "$prev_current" test ;;
    esac
    finish rolled-back "$1"
}

restore_profile() {
    [ -n "$prev_profile" ] || return 0
    nix-env -p "$PROFILE" --switch-generation "$prev_gen" >/dev/null 2>&1
    if [ -n "$created" ] && [ "$new_gen" != "$prev_gen" ]; then
        nix-env -p "$PROFILE" --delete-generations "$new_gen" >/dev/null 2>&1
    fi
}

reactivate() {
    [ -n "$1" ] || return 0
    NIXOS_INSTALL_BOOTLOADER=0 "$1/bin/switch-to-configuration" "$2" >> "$rundir/activate.log" 2>&1 \
        || event log "re-activating $1 ($2) failed: exit $?"
}

already_there() {  # whether the mode would change nothing: the system runs (and boots) the target already
    local running profile active
    running=$(readlink -f "$CURRENT_SYSTEM" 2>/dev/null || true)
    profile=$(readlink -f "$PROFILE" 2>/dev/null || true)
    active=$(readlink -f "$(activated)" 2>/dev/null || true)
    case $mode in
        switch) [ "$running" = "$active" ] && [ "$profile" = "$target" ] ;;
        boot)
            [ "$profile" = "$target" ] || return 1
            [ -z "$with_reboot" ] || [ "$(readlink -f "$BOOTED_SYSTEM" 2>/dev/null)" = "$target" ] ;;
        test) [ "$running" = "$active" ] ;;
        *) false ;;
    esac
}

check_serial_path() {  # $1, the last serial applied: that serial must name the system it named then
    local applied
    [ "$p_serial" = "$1" ] || return 0
    applied=$(cat "$STATE/pointers/$pointer.path" 2>/dev/null || true)
    if [ -n "$applied" ] && [ "$applied" != "$p_path" ]; then
        fail "pointer $pointer: serial $p_serial names $p_path, but this host applied serial $p_serial as $(one_line "$applied") (two publishes took one serial): publish again"
    fi
}

record_pointer_serial() {
    if [ -n "$pointer" ] && [ -n "${p_serial:-}" ]; then
        mkdir -p "$STATE/pointers" && printf '%s\n' "$p_serial" > "$STATE/pointers/$pointer.serial"
        printf '%s\n' "$target" > "$STATE/pointers/$pointer.path"
    fi
}

finish() {
    if [ "$1" = "done" ]; then record_pointer_serial; fi
    rm -f "$GCROOTS/$run" "$rundir/unit"
    record_last_run "$1"
    if [ -n "$with_reboot" ]; then
        clear_pending
        event state booted "$(readlink -f "$BOOTED_SYSTEM" 2>/dev/null || true)"
    fi
    event state current "$(readlink -f "$CURRENT_SYSTEM" 2>/dev/null || true)"
    event state generation "$(generation_of "$PROFILE")"
    event result "$1" "$2"
    case $1 in done) exit 0 ;; rolled-back) exit 2 ;; *) exit 1 ;; esac
}

# --- reboots: the host boots again, then is confirmed through a new login or returns by itself ---------------
#
# Before the reboot the run writes `pending` (armed). At boot, before sshd, topdeck-reboot-guard.service runs
# `boot-guard`, which links the run's folder into /run, takes the host's lock, checks what booted and starts the watcher
# (a unit, as after an activation): confirmed in time, the run is done; otherwise the profile and the boot entry go
# back to the previous system, `pending` says returning, and the host reboots into it; the boot after that ends the run.

boot_id() { tr -cd '0-9a-f-' < /proc/sys/kernel/random/boot_id 2>/dev/null; }

check_can_reboot() {  # before the lock: what cannot reboot with a guard is refused with nothing changed
    if [ ! -d "$SYSTEMD_DIR" ] || ! command -v systemctl >/dev/null 2>&1; then
        line result failed "cannot reboot: this host runs no systemd, so nothing can reboot it and guard the boot: nothing was changed"
        exit 1
    fi
    if ! systemctl cat "$GUARD_UNIT" >/dev/null 2>&1; then
        line result failed "cannot reboot with magic rollback: this host has no $GUARD_UNIT (hosts/modules/topdeck-reboot-guard.nix), which returns it to its previous system when the boot is not confirmed: nothing was changed"
        exit 1
    fi
}

reboot_verb() {  # reboot RUN [options]: boot the boot default again, guarded; the reboot itself runs in a unit
    [ $# -ge 1 ] || usage "reboot RUN [--confirm SECONDS]"
    run=$1 mode=reboot with_reboot=1
    shift
    check_run_id "$run"
    parse_options "$@"
    check_can_reboot
    take_lock
    # shellcheck disable=SC2015  # either step failing is the same failure
    target=$(readlink -f "$PROFILE" 2>/dev/null) && [ -e "$target" ] || fail "this host has no system profile to boot: nothing was changed"
    event state target "$target"
    prev_current=$(readlink -f "$CURRENT_SYSTEM" 2>/dev/null || true)
    event state before "$prev_current"
    event state generation "$(generation_of "$PROFILE")"
    prev_gen='' prev_profile='' new_gen='' created=''
    if [ "$target" != "$prev_current" ]; then  # the boot default is another system: return to the running one
        prev_gen=$(generation_naming "$prev_current")
        [ -z "$prev_gen" ] || prev_profile=$prev_current
    fi
    save_failed_units
    write_run_env
    cp "$0" "$rundir/host.sh"
    detach_and_follow reboot-now
}

generation_naming() {  # the newest system generation whose system is $1, if there is one
    local found='' link number
    for link in "$PROFILE"-*-link; do
        [ "$(readlink -f "$link" 2>/dev/null)" = "$1" ] || continue
        number=${link#"$PROFILE"-}
        number=${number%-link}
        case $number in '' | *[!0-9]*) continue ;; esac
        if [ -z "$found" ] || [ "$number" -gt "$found" ]; then found=$number; fi
    done
    printf '%s' "$found"
}

reboot_now() {  # the detached part of `reboot`
    check_run_id "$1"
    run=$1
    # shellcheck source=/dev/null  # the run's env file, written by `start` at run time
    . "$rundir/env"
    take_over reboot-now
    reboot_into "the host did not reboot"
}

reboot_into() {  # arm the guard for the next boot, then reboot; $1: what failing to reboot means
    local old_boot
    old_boot=$(boot_id)
    printf "old_boot='%s'\n" "$old_boot" >> "$rundir/env"
    { cp "$rundir/host.sh" "$REBOOT/host.sh.tmp" && mv "$REBOOT/host.sh.tmp" "$REBOOT/host.sh"; } 2>/dev/null \
        || finish failed "$1: cannot write $REBOOT/host.sh"
    set_pending armed || finish failed "$1: cannot write $REBOOT/pending"
    event state boot-id "$old_boot"
    event phase reboot "$old_boot"
    reboot_and_wait "$1"
}

set_pending() { printf '%s %s\n' "$1" "$run" > "$REBOOT/pending.tmp" && mv "$REBOOT/pending.tmp" "$REBOOT/pending"; }

clear_pending() {  # when the pending reboot is this run's
    case $(cat "$REBOOT/pending" 2>/dev/null) in *" $run") rm -f "$REBOOT/pending" ;; esac
}

reboot_and_wait() {  # reboot, and hold the host's lock until the shutdown ends this process
    local deadline
    if ! systemctl --no-block reboot < /dev/null >> "$rundir/activate.log" 2>&1; then
        clear_pending
        finish failed "$1: systemctl reboot failed ($(tail -n 1 "$rundir/activate.log" | tr '\t' ' '))"
    fi
    deadline=$(( $(date +%s) + REBOOT_WAIT ))
    while [ "$(date +%s)" -lt "$deadline" ]; do sleep 1; done  # the shutdown may kill a sleep before this shell
    clear_pending
    finish failed "$1: it was still up ${REBOOT_WAIT}s after systemctl reboot"
}

boot_guard() {  # at boot, before sshd: take over the run that rebooted the host
    local phase
    [ -f "$REBOOT/pending" ] || exit 0
    read -r phase run < "$REBOOT/pending" || exit 0
    check_run_id "$run"
    mkdir -p "$RUNTIME/runs" && ln -sfn "$REBOOT/run" "$rundir" || exit 1
    # shellcheck source=/dev/null  # the run's env file, written by `start` at run time
    . "$rundir/env"
    exec 9>>"$RUNTIME/lock"
    flock -n 9 || { echo "topdeck-host: the host's lock is held at boot" >&2; exit 1; }
    printf 'run %s since %s' "$run" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$RUNTIME/lock.owner"
    booted=$(readlink -f "$BOOTED_SYSTEM" 2>/dev/null || true)
    event phase booted "$(boot_id)"
    event state booted "$booted"
    case $phase in
        armed)
            printf "rebooted=1\n" >> "$rundir/env"
            rebooted=1
            set_pending waiting
            [ "$booted" = "$target" ] || revert "it booted ${booted:-no system}, not $target"
            printf 'booted %s\n' "$target" > "$rundir/note"
            [ "$confirm" -gt 0 ] || finish "done" "booted $target"
            detach watch ;;
        waiting) revert "it booted again before it was confirmed" ;;
        returning) returned ;;
        *) clear_pending; finish failed "unknown phase '$(one_line "$phase")' in $REBOOT/pending" ;;
    esac
}

return_to_previous() {  # after the reboot, unconfirmed: the boot entry back to the system before, and boot it
    event phase rollback "$1"
    if [ -z "$prev_profile" ] || [ "$prev_profile" = "$target" ]; then
        finish failed "$1; it has no other system to return to, so it stays on $target"
    fi
    restore_profile
    reactivate "$prev_profile" boot
    one_line "$1" > "$rundir/reason"
    if [ "$(readlink -f "$BOOTED_SYSTEM" 2>/dev/null)" = "$prev_profile" ]; then
        finish rolled-back "$1; $prev_profile, which it runs, is its boot default again"
    fi
    set_pending returning
    event phase returning "$prev_profile"
    reboot_and_wait "it could not reboot into $prev_profile (now its boot default again)"
}

returned() {  # the boot after returning
    local reason
    reason=$(cat "$rundir/reason" 2>/dev/null)
    if [ "$booted" = "$prev_profile" ]; then
        finish rolled-back "$reason; it rebooted into $prev_profile by itself"
    fi
    finish failed "$reason; it rebooted to return to $prev_profile, but booted ${booted:-no system}"
}

# --- the other commands -------------------------------------------------------------------------------

follow_events() {  # print run $1's events after line $2 until its result
    local seen="$2" count
    while :; do
        count=$(wc -l < "$rundir/events")
        if [ "$count" -gt "$seen" ]; then
            sed -n "$((seen + 1)),${count}p" "$rundir/events"
            if sed -n "$((seen + 1)),${count}p" "$rundir/events" | grep -q "^result$TAB"; then
                exit_as_result
            fi
            if [ -z "$since_reboot" ] &&
                sed -n "$((seen + 1)),${count}p" "$rundir/events" | grep -q "^phase${TAB}reboot$TAB"; then
                exit 5  # the host goes down now: its guard gives the result after the boot
            fi
            seen=$count
        fi
        # Looked at twice, a second apart, before a run is declared gone.
        if ! run_alive "$1" && ! { sleep 1; run_alive "$1"; }; then
            sed -n "$((seen + 1)),\$p" "$rundir/events"
            # the run may have written its result between the count above and now
            grep -q "^result$TAB" "$rundir/events" && exit_as_result
            line result failed "the deploy stopped on the host before it ended ($(lock_state "$1"))"
            exit 1
        fi
        sleep 0.2
    done
}

exit_as_result() {  # exit as the run's result says: 0 done, 2 rolled back, else 1
    local outcome
    outcome=$(sed -n "s/^result$TAB\([^$TAB]*\).*/\1/p" "$rundir/events" | tail -n 1)
    case $outcome in done) exit 0 ;; rolled-back) exit 2 ;; *) exit 1 ;; esac
}

lock_state() {  # what the host's lock says of run $1, for a report
    printf 'its lock is %s (owner: run %s), its unit %s' \
        "$(flock -n "$RUNTIME/lock" true 2>/dev/null && echo free || echo held)" \
        "$(cut -d' ' -f2 "$RUNTIME/lock.owner" 2>/dev/null)" "$(cat "$RUNTIME/runs/$1/unit" 2>/dev/null || echo none)"
}

run_alive() {  # whether run $1 still holds the host's lock (or its detached unit is taking it over)
    case $(cat "$RUNTIME/lock.owner" 2>/dev/null) in "run $1 "*) ;; *) return 1 ;; esac
    ! flock -n "$RUNTIME/lock" true 2>/dev/null || unit_alive "$1"
}

since_reboot=
follow() {
    [ $# = 1 ] || { [ $# = 2 ] && [ "$2" = --since-reboot ]; } || usage "follow RUN [--since-reboot]"
    check_run_id "$1"
    if [ ! -f "$rundir/events" ] && [ $# = 2 ]; then
        line result failed "this host has no run $1 since its reboot: its $GUARD_UNIT did not take the run over"
        exit 1
    fi
    [ -f "$rundir/events" ] || { line result failed "this host has no run $1 (rebooted since?)"; exit 1; }
    local start=0
    if [ $# = 2 ]; then
        since_reboot=1
        start=$(grep -n "^phase${TAB}reboot$TAB" "$rundir/events" | head -n 1 | cut -d : -f 1)
    fi
    follow_events "$1" "${start:-0}"
}

confirm_run() {
    local reason
    [ $# -ge 1 ] || usage "confirm RUN [checks]"
    check_run_id "$1"
    shift
    parse_options "$@"
    [ -e "$rundir/canary" ] || { line confirm late "the run is no longer waiting for confirmation"; exit 1; }
    reason=$(run_checks)
    if [ -n "$reason" ]; then
        one_line "$reason" > "$rundir/reject.tmp" && mv "$rundir/reject.tmp" "$rundir/reject"  # whole, once seen
        line confirm rejected "$(one_line "$reason")"
        exit 1
    fi
    rm "$rundir/canary" 2>/dev/null || { line confirm late "the run stopped waiting for confirmation"; exit 1; }
    line confirm ok
}

run_checks() {  # prints why the first failing check failed, nothing if all pass
    local booted new
    if [ -n "$booted_check" ]; then
        booted=$(readlink -f "$BOOTED_SYSTEM" 2>/dev/null || true)
        [ "$booted" = "$booted_check" ] || { echo "it booted ${booted:-no system}, not $booted_check"; return; }
    fi
    if [ -n "$check_command" ]; then
        sh -c "$check_command" > "$rundir/check.log" 2>&1 || { echo "command '$check_command' exited $?"; return; }
    fi
    if [ -n "$check_http" ]; then
        curl -fsS -o /dev/null --max-time 10 "$check_http" > "$rundir/check.log" 2>&1 \
            || { echo "$check_http: $(tr '\n' ' ' < "$rundir/check.log")"; return; }
    fi
    if [ -n "$check_units" ] && command -v systemctl >/dev/null 2>&1; then
        systemctl --failed --no-legend --plain 2>/dev/null | awk '{ print $1 }' | sort > "$rundir/failed-units.after"
        touch "$rundir/failed-units.before"
        new=$(comm -13 "$rundir/failed-units.before" "$rundir/failed-units.after" | tr '\n' ' ')
        [ -z "$new" ] || echo "units failed since the activation: $new"
    fi
}

status() {
    local current
    current=$(readlink -f "$CURRENT_SYSTEM" 2>/dev/null || true)
    line current "$current"
    line booted "$(readlink -f "$BOOTED_SYSTEM" 2>/dev/null || true)"
    line profile "$(readlink -f "$PROFILE" 2>/dev/null || true)"
    line generation "$(generation_of "$PROFILE")"
    line boot-id "$(boot_id)"
    line last-run "$(cat "$STATE/last-run" 2>/dev/null || true)"
    line agent "$(cat "$STATE/agent" 2>/dev/null || true)"
    running_specialisation "$current"
    if [ -e "$BOOTED_SYSTEM" ]; then line needs-reboot "$(needs_reboot)"; fi
    if [ -e "$RUNTIME/lock" ] && command -v flock >/dev/null 2>&1 && ! flock -n "$RUNTIME/lock" true; then
        line deploying "$(cat "$RUNTIME/lock.owner" 2>/dev/null || true)"
    fi
}

running_specialisation() {  # `specialisation NAME` and `system PARENT` when $1 is a specialisation of the profile's
    local parent entry
    parent=$(readlink -f "$PROFILE" 2>/dev/null) || return 0
    for entry in "$parent"/specialisation/*; do
        [ -e "$entry" ] || continue
        if [ "$(readlink -f "$entry")" = "$1" ]; then
            line specialisation "${entry##*/}"
            line system "$parent"
            return 0
        fi
    done
}

needs_reboot() {  # whether what runs differs from what booted in what only a reboot changes (as autoUpgrade asks)
    local link
    for link in kernel initrd kernel-modules systemd; do
        # -e: a link neither system has names nothing (-f would name a path under each system, always apart)
        if [ "$(readlink -e "$BOOTED_SYSTEM/$link" 2>/dev/null)" != "$(readlink -e "$CURRENT_SYSTEM/$link" 2>/dev/null)" ]; then
            printf 'yes\t%s' "$link"
            return 0
        fi
    done
    printf 'no'
}

generations() {
    local current number day clock path version is_current
    current=$(generation_of "$PROFILE")
    nix-env -p "$PROFILE" --list-generations 2>/dev/null | while read -r number day clock _; do
        path=$(readlink -f "$PROFILE-$number-link" 2>/dev/null || true)
        version=$(cat "$path/nixos-version" 2>/dev/null || true)
        is_current=
        [ "$number" = "$current" ] && is_current=current
        line generation "$number" "$day $clock" "$path" "$version" "$is_current"
    done
}

closures() {
    local list index top
    # shellcheck disable=SC2015  # either test failing is the same failure
    [ $# = 1 ] && matches "$1" "$STORE_PATH_RE" || usage "closures PATH"
    list=$(mktemp) || exit 1
    index=0
    for top in "$(readlink -f "$CURRENT_SYSTEM")" "$1"; do
        nix-store --query --requisites "$top" > "$list" 2>/dev/null \
            || { rm -f "$list"; line result failed "$top is not in this host's store"; exit 1; }
        # shellcheck disable=SC2094  # $list is only read, twice (paths beside their sizes)
        xargs nix-store --query --size < "$list" | paste "$list" - | sed "s/^/closure$TAB$index$TAB/"
        index=$((index + 1))
    done
    rm -f "$list"
}

agent() {  # unattended: deploy the pointer when it names something else than what runs
    run="agent-$(date +%s)"
    check_run_id "$run"
    trap 'record_agent $?' EXIT
    agent_confirm "$@" &
    deploy "$run" switch - "$@" --confirm "$AGENT_CONFIRM"
}

# The agent confirms its own switch as topdeck does a deploy's, with the same health checks (the check options it
# was given) and the cache still reachable; else the switch is rolled back when this window ends.
AGENT_CONFIRM=120
agent_confirm() {  # in the background of `agent`: once the switch waits for confirmation, check, then confirm
    trap - EXIT
    parse_options "$@"
    while [ ! -e "$rundir/canary" ]; do
        kill -0 "$$" 2>/dev/null || exit 0
        if grep -q "^result$TAB" "$rundir/events" 2>/dev/null; then exit 0; fi
        sleep 0.2
    done
    if ! curl -fsS -o /dev/null --max-time 15 "$cache/nix-cache-info" > "$rundir/cache-check.log" 2>&1; then
        printf 'the cache is unreachable after the switch: %s\n' "$(one_line "$(cat "$rundir/cache-check.log")")" \
            > "$rundir/reject.tmp" && mv "$rundir/reject.tmp" "$rundir/reject"
        exit 0
    fi
    confirm_run "$run" "$@" > /dev/null
}

record_agent() {  # the agent's outcome, for `status`: $1 the agent's exit status; nothing when nothing was to do
    local result reason what at text
    result=$(grep "^result$TAB" "$rundir/events" 2>/dev/null | tail -n 1)
    [ -n "$result" ] || return 0
    if [ "$1" = 0 ] && ! grep -q "^phase${TAB}activate" "$rundir/events"; then return 0; fi
    reason=$(printf '%s\n' "$result" | cut -f 3-)
    what="${pointer:-its pointer} #${p_serial:-?}"
    [ "${target:--}" = - ] || what="$what ($target)"
    at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    case $1 in
        0) text="agent: switched to $what at $at" ;;
        2) text="agent: rolled back from $what at $at: $reason" ;;
        *) text="agent: failed to apply $what at $at: $reason" ;;
    esac
    mkdir -p "$STATE" && one_line "$text" > "$STATE/agent.tmp" && mv "$STATE/agent.tmp" "$STATE/agent"
}

command -v nix-store >/dev/null 2>&1 || { line result failed "nix-store is not installed on this host"; exit 1; }
[ $# -ge 1 ] || usage "a command: deploy, agent, reboot, confirm, follow, status or generations"
verb=$1
shift
case $verb in
    deploy) deploy "$@" ;;
    agent) agent "$@" ;;
    activate) activate "$@" ;;
    watch) watch "$@" ;;
    reboot) reboot_verb "$@" ;;
    reboot-now) reboot_now "$@" ;;
    boot-guard) boot_guard ;;
    confirm) confirm_run "$@" ;;
    follow) follow "$@" ;;
    status) status ;;
    generations) generations ;;
    closures) closures "$@" ;;
    *) usage "unknown command $verb" ;;
esac
