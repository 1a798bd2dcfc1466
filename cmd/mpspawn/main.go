// Command mpspawn is a torchrun-compatible launcher for training processes:
//
//	mpspawn [flags] SCRIPT [ARGS...]
//
// It starts one rank per process slot with torchrun's environment contract,
// stops every rank as soon as one fails, forwards signals, and never leaves
// a rank or a rank's child running after it exits.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"
)

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// usageError is bad input, found while the command line is parsed and
// validated (parseConfig), or while the ranks are placed on this machine,
// before any rank starts: one line, exit code 2 (a rank's own exit code is
// never 2 by mpspawn's doing), nothing started.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// exitCode carries the job's exit code out of the cli action.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit code %d", int(e)) }

// run is main without os.Exit, so tests can call it.
func run(args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	args = normalizeArgs(args)
	app.Metadata = map[string]any{argsKey: args}
	err := checkArgs(app, args)
	if err == nil {
		err = checkPET(app.Flags)
	}
	switch {
	case err != nil:
	case subcommandHelp(app, args, stdout):
		return 0
	case launcherFlag(args, app.Flags, "help", "h"):
		writeHelp(stdout, app, termWidth(stdout))
		return 0
	case launcherFlag(args, app.Flags, fVersion):
		writeVersion(stdout)
		return 0
	case launcherFlag(args, app.Flags, fSSHNode):
		var nonce string
		if nonce, err = startSSHNode(os.Stdin); err == nil {
			app.Metadata[sshNodeKey] = nonce
			err = app.RunContext(context.Background(), args)
		}
	default:
		err = app.RunContext(context.Background(), args)
	}
	var code exitCode
	switch {
	case err == nil:
		return 0
	case errors.As(err, &code):
		return int(code)
	}
	// A usage error, or another error before a rank started (or between
	// rounds): nothing ran, so it is not a rank's exit code. Several
	// (errors.Join: each host of a job over ssh that failed its check) are
	// one line each.
	for _, e := range errorLines(err) {
		fmt.Fprintf(stderr, "mpspawn: error: %s\n", explain(e))
	}
	return 2
}

// errorLines is err's parts when it joins several errors, else err alone.
func errorLines(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok && len(j.Unwrap()) > 0 {
		return j.Unwrap()
	}
	return []error{err}
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:      "mpspawn",
		Usage:     "launch one process per rank, torchrun-compatible, fast to start and fast to fail",
		UsageText: "mpspawn [flags] SCRIPT [ARGS...]\nmpspawn --no-python [flags] PROGRAM [ARGS...]\nmpspawn -m [flags] MODULE [ARGS...]\nmpspawn gpus [--json]\nmpspawn status [PID|RUN_ID] [--json]\nmpspawn top [PID|RUN_ID]",
		Description: "Starts --nproc-per-node ranks of SCRIPT (run as PYTHON -u SCRIPT ARGS) with torchrun's\n" +
			"environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ...). When a rank fails,\n" +
			"every other rank's process group gets SIGTERM, then SIGKILL after --grace-period, and mpspawn\n" +
			"exits with the failing rank's own exit code. Flags may also be written torchrun-style with\n" +
			"underscores (--nproc_per_node). Every flag also reads PET_<FLAG> from the environment, as\n" +
			"torchrun does (Kubernetes PyTorchJob); inside a SLURM step (srun), SLURM's nodes, node rank,\n" +
			"master, GPUs and job id are the defaults: the command line wins over PET_*, which wins over\n" +
			"SLURM (docs/schedulers.md).\n\n" +
			"Exit codes: 0 all ranks succeeded; the root-cause rank's exit code (128+N for signal N);\n" +
			"2 bad usage, or any other error before a rank started; 130/143 when mpspawn itself got\n" +
			"SIGINT/SIGTERM.",
		Flags:                  flags(),
		Commands:               []*cli.Command{gpusCommand(), statusCommand(), topCommand(), completionCommand(), manCommand()},
		Action:                 action,
		Writer:                 stdout,
		ErrWriter:              stderr,
		HideHelpCommand:        true,
		UseShortOptionHandling: false,
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
		ExitErrHandler: func(*cli.Context, error) {}, // exit codes are mapped once, in run
	}
}
