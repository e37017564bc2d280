#!/usr/bin/env bash
# Fetches the current kernel of a Debian suite (default trixie-backports,
# 7.x) for the test VM: its linux-binary, linux-modules and linux-base
# packages (the image, the modules, and the module lists), with
# apt-get download through a private apt state (the host's sources and
# /boot are left alone), unpacked with dpkg-deb -x into the VM cache, and
# depmod run on the result. Cached: done once per suite. Prints
#   kver=VERSION vmlinuz=PATH moddir=PATH
# for run.sh to eval.
set -euo pipefail

cache=${UBLKVD_VM_CACHE:-$HOME/.cache/ublkvd-vm}
suite=${1:-trixie-backports}
dir=$cache/kernel-$suite

if [ ! -f "$dir/version" ]; then
    rm -rf "$dir"
    mkdir -p "$dir"/apt/{sources,lists/partial,archives/partial} "$dir/root"
    cat >"$dir/apt/sources/debian.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$dir/apt/sources"
        -o Dir::Etc::Preferences=/dev/null -o "Dir::Etc::PreferencesParts=$dir/apt/sources"
        -o "Dir::State=$dir/apt" -o "Dir::Cache=$dir/apt" -o APT::Sandbox::User=root)
    apt-get "${apt[@]}" -qq update
    # The metapackage names the suite's current image: linux-image-VERSION.
    image=$(apt-cache "${apt[@]}" depends linux-image-amd64 | awk '$2 ~ /^linux-image-[0-9]/ { print $2; exit }')
    version=${image#linux-image-}
    [ -n "$version" ] || { echo "kernel.sh: no linux-image in $suite" >&2; exit 1; }
    (cd "$dir/apt/archives" && apt-get "${apt[@]}" -qq download "linux-binary-$version" "linux-modules-$version" "linux-base-$version")
    for deb in "$dir"/apt/archives/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
    rm -f "$dir"/apt/archives/*.deb
    # The packages put the modules in /usr/lib/modules; depmod looks in
    # BASE/lib/modules.
    ln -s usr/lib "$dir/root/lib"
    depmod -b "$dir/root" "$version"
    echo "$version" >"$dir/version"
fi
version=$(cat "$dir/version")
echo "kver=$version vmlinuz=$dir/root/lib/modules/$version/vmlinuz moddir=$dir/root/lib/modules/$version"
