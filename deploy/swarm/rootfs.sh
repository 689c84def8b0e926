# Sourced by build-plugin.sh and the Swarm tests, which build images without a base
# image: each program goes into a bare root file system with exactly the libraries
# it loads.

# copy_with_libs ROOTFS PROGRAM DEST: installs PROGRAM as ROOTFS/DEST, and each shared
# library ldd lists for it at the same path under ROOTFS. A static program has none
# (and ldd fails on it).
copy_with_libs() {
  local rootfs=$1 lib libs
  install -D -m 0755 "$2" "$rootfs$3"
  libs=$({ ldd "$2" 2>/dev/null || true; } | grep -oE '/[^ ]+\.so[^ ]*' || true)
  for lib in $libs; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
}
