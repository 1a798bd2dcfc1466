#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, with apt-get:
#   python3-torch   torch with gloo for /usr/bin/python3, and torchrun
#                   (the DDP end-to-end tests);
#   etcd-server     /usr/bin/etcd, the multi-node rendezvous tests start their
#   etcd-client     own servers on free loopback ports (etcdctl for debugging);
#   libxml2-utils   xmllint, the JUnit report's schema check;
#   slurmctld slurmd slurm-client munge
#                   the two-node SLURM cluster the scheduler tests bring up;
#   openssh-server openssh-client
#                   sshd and ssh: the tests of --hostfile/--hosts start their
#                   own sshd servers on 127.0.0.2, 127.0.0.3, ...
# Nothing is started here: each test starts the servers it needs and stops
# them by pid. Without root (or passwordless sudo) it says what to run; the
# tests that need a missing package then skip, except in CI (CI=true), where
# they fail.
set -euo pipefail

torch_probe='import torch, torch.distributed; assert torch.distributed.is_gloo_available()'

missing=()
if ! { [ -x /usr/bin/python3 ] && /usr/bin/python3 -c "$torch_probe" 2>/dev/null; }; then
	missing+=(python3-torch)
fi
command -v etcd >/dev/null || missing+=(etcd-server etcd-client)
# xmllint validates --junit-xml reports against the JUnit schema.
command -v xmllint >/dev/null || missing+=(libxml2-utils)
{ [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null && command -v ssh-keygen >/dev/null; } || missing+=(openssh-server openssh-client)
for bin in slurmctld slurmd srun munged; do
	if ! command -v "$bin" >/dev/null && [ ! -x "/usr/sbin/$bin" ]; then
		missing+=(slurmctld slurmd slurm-client munge)
		break
	fi
done

if [ ${#missing[@]} -eq 0 ]; then
	echo "test deps: torch, etcd, slurm and ssh are installed"
	exit 0
fi

if [ "$(id -u)" = 0 ]; then
	sudo=
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
	sudo=sudo
else
	echo "test deps: missing ${missing[*]} and this user cannot install them; run: apt-get update && apt-get install -y ${missing[*]}" >&2
	exit 0
fi

echo "test deps: installing ${missing[*]} (Debian) ..."
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# policy-rc.d (or no init) keeps the packages' own services from starting;
# the tests never use them.
$sudo apt-get install -y -qq "${missing[@]}" >/dev/null
/usr/bin/python3 -c "$torch_probe"
command -v etcd >/dev/null
echo "test deps: installed"
