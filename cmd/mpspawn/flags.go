package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// Flag names, shared by the flag table and the action.
const (
	fNproc         = "nproc-per-node"
	fNNodes        = "nnodes"
	fNodeRank      = "node-rank"
	fMasterAddr    = "master-addr"
	fMasterPort    = "master-port"
	fStandalone    = "standalone"
	fRunID         = "run-id"
	fNoPython      = "no-python"
	fModule        = "module"
	fStartMethod   = "start-method"
	fPreload       = "preload"
	fIPC           = "ipc"
	fLogDir        = "log-dir"
	fRedirects     = "redirects"
	fTee           = "tee"
	fRanksFilter   = "local-ranks-filter"
	fGrace         = "grace-period"
	fPython        = "python"
	fPrefix        = "log-line-prefix-template"
	fNoPrefix      = "no-prefix"
	fTimestamps    = "timestamp-output"
	fSummaryJSON   = "summary-json"
	fJUnitXML      = "junit-xml"
	fGPUsPerRank   = "gpus-per-rank"
	fGPUVisibility = "gpu-visibility"
	fCPUBind       = "cpu-bind"
	fTopology      = "topology"
	fDryRun        = "dry-run"
	fJSON          = "json"
	fRole          = "role"
	fMonitor       = "monitor-interval"
	fRunPath       = "run-path"
	fVersion       = "version"
	catPlacement   = "GPUs and CPUs"
	catRanks       = "Ranks"
	catRendezvous  = "Rendezvous"
	catProgram     = "Program"
	catLogs        = "Logs"
	catFailure     = "Failure handling"
)

// flags is the launcher's flags; each also reads PET_<FLAG> (see withPET).
func flags() []cli.Flag {
	return withPET(append(append([]cli.Flag{
		&cli.StringFlag{Category: catRanks, Name: fNproc, Value: "1", Usage: "ranks on this node: `N`, gpu (one per usable GPU), cpu (one per CPU) or auto (GPUs if any, else CPUs)"},
		&cli.StringFlag{Category: catRanks, Name: fStartMethod, Value: "spawn", Usage: "`METHOD` that creates the ranks: spawn (a fresh exec per rank) or forkserver (Python ranks forked from one server started first, see --preload)"},
		&cli.StringFlag{Category: catRanks, Name: fRole, Value: "default", Usage: "the ranks' role `NAME` (ROLE_NAME, and ${role_name} in the line prefix)"},
		&cli.StringFlag{Category: catRanks, Name: fPreload, Usage: "with --start-method forkserver, `MODULES` (comma list, e.g. torch) the server imports once, so that every rank starts with them imported"},

		&cli.IntFlag{Category: catPlacement, Name: fGPUsPerRank, Value: 1, Usage: "`N` GPUs per rank, chosen best-connected (NVLink first)"},
		&cli.StringFlag{Category: catPlacement, Name: fGPUVisibility, Value: "local-rank", Usage: "`MODE` of CUDA_VISIBLE_DEVICES: local-rank (every rank sees the job's GPUs in local-rank order, so set_device(LOCAL_RANK) is its own) or isolate (each rank sees only its own, as cuda:0)"},
		&cli.StringFlag{Category: catPlacement, Name: fCPUBind, Value: "exclusive", Usage: "bind ranks to CPUs local to their GPUs (or spread over the CPUs without GPUs): `POLICY` exclusive (an even share each), numa (the whole NUMA node) or none"},
		&cli.StringFlag{Category: catPlacement, Name: fTopology, Usage: "plan against the topology snapshot in `FILE` (from mpspawn gpus --json on the target machine) instead of this machine"},
		&cli.BoolFlag{Category: catPlacement, Name: fDryRun, Usage: "print each rank's GPUs, CPUs and environment, and start nothing"},
		&cli.BoolFlag{Category: catPlacement, Name: fJSON, Usage: "with --dry-run, print the plan as JSON"},

		&cli.StringFlag{Category: catRendezvous, Name: fNNodes, Value: "1", Usage: "`N` nodes in the job"},
		&cli.IntFlag{Category: catRendezvous, Name: fNodeRank, Value: 0, Usage: "this node's rank `N`, 0 .. nnodes-1"},
		&cli.StringFlag{Category: catRendezvous, Name: fMasterAddr, Value: "127.0.0.1", Usage: "`ADDR` of the node that hosts rank 0 (MASTER_ADDR)"},
		&cli.IntFlag{Category: catRendezvous, Name: fMasterPort, Value: 29500, Usage: "`PORT` rank 0 listens on (MASTER_PORT)"},
		&cli.BoolFlag{Category: catRendezvous, Name: fStandalone, Usage: "one node: master 127.0.0.1 and a free port no other job on this host can take"},
		&cli.StringFlag{Category: catRendezvous, Name: fRunID, Usage: "job `ID` (TORCHELASTIC_RUN_ID, log dir name); default: a random id"},

		&cli.StringFlag{Category: catProgram, Name: fPython, Usage: "Python interpreter for scripts, run as `PYTHON` -u SCRIPT ARGS; default: $PYTHON_EXEC, else the python3 beside mpspawn (the environment it is installed in), else the active virtualenv's or conda env's, else python3 on PATH"},
		&cli.BoolFlag{Category: catProgram, Name: fNoPython, Usage: "run PROGRAM directly instead of through Python"},
		&cli.BoolFlag{Category: catProgram, Name: fModule, Aliases: []string{"m"}, Usage: "run a Python module, as python -m MODULE"},
		&cli.BoolFlag{Category: catProgram, Name: fRunPath, Usage: "accepted for torchrun compatibility; changes nothing: each rank runs the script by its path (PYTHON -u SCRIPT), in its own process"},
		&cli.BoolFlag{Category: catProgram, Name: fIPC, Usage: "give every rank a control channel (fd 3, MPSPAWN_CONTROL_FD) to share buffers zero-copy and use queues (examples/python/mpspawn_ipc.py)"},

		&cli.StringFlag{Category: catLogs, Name: fLogDir, Usage: "base `DIR` of per-rank files: DIR/<run-id>/attempt_<k>/<local_rank>/{stdout.log,stderr.log,error.json}"},
		&cli.StringFlag{Category: catLogs, Name: fRedirects, Aliases: []string{"r"}, Value: "0", Usage: "send `STREAMS` to the log files only: 0 none, 1 stdout, 2 stderr, 3 both, or per local rank (0:3,1:2,...)"},
		&cli.StringFlag{Category: catLogs, Name: fTee, Aliases: []string{"t"}, Value: "0", Usage: "send `STREAMS` to the console and the log files, same values as --redirects"},
		&cli.StringFlag{Category: catLogs, Name: fRanksFilter, Usage: "show only these local `RANKS` on the console, e.g. 0,3 (files get every rank)"},
		&cli.StringFlag{Category: catLogs, Name: fPrefix, EnvVars: []string{"TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"}, Value: "[${rank}]: ", Usage: "console line prefix `TEMPLATE`; ${rank}, ${local_rank} and ${role_name} are replaced"},
		&cli.BoolFlag{Category: catLogs, Name: fNoPrefix, Usage: "print rank output without a prefix"},
		&cli.BoolFlag{Category: catLogs, Name: fTimestamps, Usage: "start each console line with the time it was read"},

		&cli.StringFlag{Category: catFailure, Name: fGrace, Value: "30s", Usage: "wait `DURATION` between SIGTERM and SIGKILL when ranks are stopped (e.g. 5s, 500ms, or seconds)"},
		&cli.StringFlag{Category: catFailure, Name: fMonitor, Usage: "accepted for torchrun compatibility and ignored: torchrun polls the ranks every `SECONDS`; mpspawn learns of each exit the moment it happens"},
		&cli.StringFlag{Category: catFailure, Name: fJUnitXML, Usage: "write a JUnit XML report to `FILE` for CI systems: a testcase per rank, failures with their traceback, ranks mpspawn stopped as skipped; written also on a timeout, an interrupt or an error before any rank started"},
		&cli.StringFlag{Category: catFailure, Name: fSummaryJSON, Usage: "write how every rank ended, root cause first, as JSON to `FILE` (- for stdout, after the ranks' output)"},

		&cli.BoolFlag{Name: fVersion, Usage: "print the version, the commit, the Go version and whether GPU support is built in"},
	}, diagFlags()...), append(multinodeFlags(), hostsFlags()...)...))
}

// normalizeArgs rewrites torchrun-style underscore flags (--nproc_per_node)
// to their dashed names, for the launcher's own flags only: it stops at the
// script, or at "--", so the script's own arguments are never touched.
func normalizeArgs(args []string) []string {
	valued := map[string]bool{}
	for _, f := range flags() {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			valued[n] = !isBool
		}
	}
	out := append([]string(nil), args...)
	for i := 1; i < len(out); i++ {
		a := out[i]
		if a == "--" || !strings.HasPrefix(a, "-") || a == "-" {
			break
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		dashed := strings.ReplaceAll(name, "_", "-")
		if dashed != name {
			if _, known := valued[dashed]; known {
				out[i] = strings.Replace(a, name, dashed, 1)
			}
		}
		if valued[dashed] && !hasValue {
			i++ // skip the flag's value
		}
	}
	return out
}
