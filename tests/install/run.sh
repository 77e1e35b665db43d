#!/bin/sh
# tests/install/run.sh BUILD SOURCE CC EXAMPLE — what a program outside this tree gets from an
# installed attn. Installs BUILD into a temporary prefix (moved before use: the installed files
# must not name the folder they were installed to), then builds examples/causal.c against it four
# ways: with pkg-config (libattn.so, and libattn.a) and with the CMake package (attn::attn,
# attn::attn_static). Each program must print what EXAMPLE (the in-tree example_causal) prints,
# and the shared ones must load the installed libattn.so.0. Also checks that attn.pc's version is
# attn.h's ATTN_VERSION_STRING and that libattn.so exports exactly the functions attn.h declares.
set -eu
build=$1 src=$2 cc=$3 example=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

cmake --install "$build" --prefix "$tmp/first" >"$tmp/install.log" || fail "cmake --install"
mv "$tmp/first" "$tmp/prefix"
prefix=$tmp/prefix
so=$(find "$prefix" -name libattn.so.0 | head -n 1)
[ -n "$so" ] || fail "the install lacks libattn.so.0"
lib=$(dirname "$so") # lib, or what GNUInstallDirs chose (lib64, lib/<multiarch>)
for f in "$prefix/include/attn.h" "$lib/libattn.a" "$prefix/bin/attn" "$lib/pkgconfig/attn.pc" \
         "$lib/cmake/attn/attnConfig.cmake"; do
  test -f "$f" || fail "the install lacks $f"
done
"$example" >"$tmp/want.txt" || fail "$example"

# libattn.so exports exactly the functions attn.h declares with ATTN_API (nothing internal)
grep -o '^ATTN_API [^(]*(' "$prefix/include/attn.h" | sed 's/($//; s/.*[ *]//' | sort >"$tmp/api.txt"
nm -D --defined-only "$so" | awk '{print $3}' | sort >"$tmp/exported.txt"
[ "$(wc -l <"$tmp/api.txt")" -ge 20 ] || fail "attn.h's ATTN_API declarations not found"
cmp -s "$tmp/api.txt" "$tmp/exported.txt" ||
  { diff "$tmp/api.txt" "$tmp/exported.txt"; fail "libattn.so exports other symbols than attn.h declares"; }
echo "ok: libattn.so exports the $(wc -l <"$tmp/api.txt") functions of attn.h"

same() { # NAME OUTPUT: the program printed what the in-tree example prints
  cmp -s "$tmp/want.txt" "$2" || { diff "$tmp/want.txt" "$2" | head; fail "$1 prints otherwise"; }
  echo "ok: $1"
}
loads_installed() { # NAME BINARY: the dynamic loader resolves libattn.so.0 inside the prefix
  LD_LIBRARY_PATH="$lib" ldd "$2" | grep -q "libattn.so.0 => $lib/" ||
    fail "$1 does not load $so"
}

if command -v pkg-config >/dev/null 2>&1; then
  export PKG_CONFIG_PATH="$lib/pkgconfig"
  want=$(sed -n 's/^#define ATTN_VERSION_STRING "\(.*\)"$/\1/p' "$src/include/attn.h")
  got=$(pkg-config --modversion attn)
  [ "$got" = "$want" ] || fail "attn.pc says version $got, attn.h $want"
  # shellcheck disable=SC2046 # pkg-config's flags are meant to split
  "$cc" -std=c11 -o "$tmp/pc_shared" "$src/examples/causal.c" $(pkg-config --cflags --libs attn) -lm ||
    fail "build with pkg-config"
  loads_installed "pkg-config, libattn.so" "$tmp/pc_shared"
  LD_LIBRARY_PATH="$lib" "$tmp/pc_shared" >"$tmp/pc_shared.txt"
  same "pkg-config, libattn.so" "$tmp/pc_shared.txt"
  # shellcheck disable=SC2046
  "$cc" -std=c11 -o "$tmp/pc_static" "$src/examples/causal.c" \
    $(pkg-config --cflags attn) -Wl,-Bstatic $(pkg-config --libs-only-l attn) -Wl,-Bdynamic \
    $(pkg-config --libs-only-L attn) $(pkg-config --static --libs-only-other attn) -lm ||
    fail "static build with pkg-config"
  ! ldd "$tmp/pc_static" | grep -q libattn || fail "the --static build loads libattn.so"
  "$tmp/pc_static" >"$tmp/pc_static.txt"
  same "pkg-config, libattn.a" "$tmp/pc_static.txt"
else
  echo "SKIP: pkg-config not found (make deps installs it); the CMake package is still checked"
fi

# found from the prefix alone where CMake looks by default (lib, lib/<multiarch>); a libdir such as
# lib64, which CMake searches only on systems that use it, is named
where=-DCMAKE_PREFIX_PATH="$prefix"
case "$lib" in "$prefix/lib" | "$prefix"/lib/*-*) ;; *) where=-Dattn_DIR="$lib/cmake/attn" ;; esac
cmake -S "$src/tests/install/consumer" -B "$tmp/consumer" -DCMAKE_C_COMPILER="$cc" "$where" \
  -DATTN_EXAMPLES="$src/examples" >"$tmp/consumer.log" 2>&1 ||
  { cat "$tmp/consumer.log"; fail "configure the CMake consumer"; }
cmake --build "$tmp/consumer" >>"$tmp/consumer.log" 2>&1 ||
  { cat "$tmp/consumer.log"; fail "build the CMake consumer"; }
loads_installed "find_package, attn::attn" "$tmp/consumer/causal_shared"
"$tmp/consumer/causal_shared" >"$tmp/cm_shared.txt"
same "find_package, attn::attn" "$tmp/cm_shared.txt"
! ldd "$tmp/consumer/causal_static" | grep -q libattn || fail "attn::attn_static loads libattn.so"
"$tmp/consumer/causal_static" >"$tmp/cm_static.txt"
same "find_package, attn::attn_static" "$tmp/cm_static.txt"
echo "PASS: install"
