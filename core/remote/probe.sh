# topdeck probe: what a plan needs to know of a host, in one SSH round trip. Changes nothing.
# stdin: the target closure's store paths, one per line. stdout: tab-separated records:
#   current PATH | booted PATH | generation N | free_kib KIB | missing PATH | have PATH NARSIZE | error TEXT
set -u
PATH=/run/current-system/sw/bin:/nix/var/nix/profiles/default/bin:/usr/local/bin:/usr/bin:/bin:$PATH
export PATH
if ! command -v nix-store >/dev/null 2>&1; then
    printf 'error\tnix-store is not installed on this host\n'
    exit 0
fi
current=$(readlink /run/current-system 2>/dev/null || true)
printf 'current\t%s\n' "$current"
printf 'booted\t%s\n' "$(readlink /run/booted-system 2>/dev/null || true)"
profile=$(readlink /nix/var/nix/profiles/system 2>/dev/null || true)
generation=${profile#system-}
generation=${generation%-link}
printf 'generation\t%s\n' "${generation:-0}"
printf 'free_kib\t%s\n' "$(df -Pk /nix/store | awk 'NR == 2 { print $4 }')"
targets=$(mktemp)
trap 'rm -f "$targets"' EXIT
cat > "$targets"
if [ -s "$targets" ]; then
    xargs nix-store --check-validity --print-invalid < "$targets" | sed 's/^/missing\t/'
fi
if [ -n "$current" ]; then
    closure=$(mktemp)
    sizes=$(mktemp)
    nix-store --query --requisites "$current" > "$closure"
    xargs nix-store --query --size < "$closure" > "$sizes"
    if [ "$(wc -l < "$closure")" = "$(wc -l < "$sizes")" ]; then
        paste "$closure" "$sizes" | sed 's/^/have\t/'
    else
        printf 'error\tnix-store could not read the sizes of the current system'"'"'s closure\n'
    fi
    rm -f "$closure" "$sizes"
fi
