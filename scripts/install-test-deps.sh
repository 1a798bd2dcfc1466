#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine: python3-torch (torch
# with gloo for /usr/bin/python3, and torchrun) for the DDP end-to-end test.
# Without root it says what to run; the DDP test then skips, except in CI
# (CI=true), where a missing torch fails it.
set -euo pipefail

probe='import torch, torch.distributed; assert torch.distributed.is_gloo_available()'
if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c "$probe" 2>/dev/null; then
	echo "test deps: torch is importable by /usr/bin/python3"
	exit 0
fi

if [ "$(id -u)" = 0 ]; then
	sudo=
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
	sudo=sudo
else
	echo "test deps: torch is missing and this user cannot install it; run: apt-get update && apt-get install -y python3-torch" >&2
	exit 0
fi

echo "test deps: installing python3-torch (Debian) ..."
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq python3-torch >/dev/null
/usr/bin/python3 -c "$probe"
echo "test deps: torch installed"
