package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"strconv"

	"github.com/mpspawn/mpspawn/gpu"
	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/launcher/diag"
	"github.com/mpspawn/mpspawn/rendezvous"
)

// Messages for people, worded here from the fields of the packages' typed
// errors. The packages' own messages name no flags and carry their package
// prefix; nothing here edits an error's text.

// topologyUsage words why the --topology snapshot at path cannot be used.
func topologyUsage(path string, err error) error {
	var te *gpu.TopologyError
	var pe *fs.PathError
	switch {
	case errors.As(err, &te):
		return usagef("--topology %s: not a valid topology snapshot: %v", path, te.Err)
	case errors.As(err, &pe):
		return usagef("--topology %s: %v", path, pe.Err)
	}
	return usagef("--topology %s: %v", path, err)
}

// visibleUsage words why CUDA_VISIBLE_DEVICES=value cannot be used.
func visibleUsage(value string, err error) error {
	var ve *gpu.VisibleError
	if errors.As(err, &ve) {
		return usagef("CUDA_VISIBLE_DEVICES=%q leaves no device visible: %s", ve.Value, ve.Reason)
	}
	return usagef("CUDA_VISIBLE_DEVICES=%q: %v", value, err)
}

// tooFewUsage words a plan that needs more GPUs than source has, for
// --nproc-per-node nproc.
func tooFewUsage(nproc, source string, e *gpu.TooFewGPUsError) error {
	return usagef("--nproc-per-node %s: %d ranks × %d gpus per rank need %d gpus; %d usable on %s",
		nproc, e.Ranks, e.GPUsPerRank, e.Want, e.Have, source)
}

// gpuReason words why discovery read no GPU (gpu.Discovery.GPUErr).
func gpuReason(err error) string {
	var ne *gpu.NVMLError
	switch {
	case !gpu.NVMLBuiltIn && runtime.GOOS != "linux":
		return "no GPU support on " + runtime.GOOS + " (NVML is read on Linux only)"
	case !gpu.NVMLBuiltIn:
		return "built without cgo: no GPU support"
	case errors.Is(err, gpu.ErrNoNVML):
		return "no NVIDIA driver (libnvidia-ml.so.1 not found)"
	case errors.As(err, &ne) && ne.GPU >= 0:
		return fmt.Sprintf("NVML failed on GPU %d (%s): %s", ne.GPU, ne.Op, ne.Detail)
	case errors.As(err, &ne):
		return fmt.Sprintf("NVML failed (%s): %s", ne.Op, ne.Detail)
	}
	return err.Error()
}

// noGPUReason says why no GPU of t is usable.
func noGPUReason(t *gpu.Topology, gpuErr error) string {
	switch {
	case gpuErr != nil:
		return gpuReason(gpuErr)
	case len(t.GPUs) == 0:
		return "no GPUs found"
	}
	return "CUDA_VISIBLE_DEVICES hides every GPU"
}

// rendezvousFlags names the flag behind each rendezvous.Config field.
var rendezvousFlags = map[string]string{
	"NNodes":       "--" + fNNodes,
	"NodeRank":     "--" + fNodeRank,
	"NProcPerNode": "--" + fNproc,
	"MasterAddr":   "--" + fMasterAddr,
	"MasterPort":   "--" + fMasterPort,
	"Standalone":   "--" + fStandalone,
}

// rendezvousUsage words a rendezvous configuration error with the flags'
// names: "--node-rank 2 must be less than --nnodes 2".
func rendezvousUsage(err error) error {
	var ce *rendezvous.ConfigError
	if !errors.As(err, &ce) {
		return usageError{err}
	}
	flag := func(field string) string {
		if f, ok := rendezvousFlags[field]; ok {
			return f
		}
		return field
	}
	msg := fmt.Sprintf("%s %s %s", flag(ce.Field), showValue(ce.Value), ce.Reason)
	if ce.Other != "" {
		msg += fmt.Sprintf(" %s %s", flag(ce.Other), showValue(ce.OtherValue))
	}
	return usageError{errors.New(msg)}
}

// showValue writes a flag's value as messages show it: strings quoted.
func showValue(v any) string {
	if s, ok := v.(string); ok {
		return strconv.Quote(s)
	}
	return fmt.Sprint(v)
}

// streamsUsage words why the value of flag (--redirects or --tee) cannot be
// read.
func streamsUsage(flag string, err error) error {
	var se *launcher.StreamsError
	switch {
	case !errors.As(err, &se):
		return usagef("%s: %v", flag, err)
	case se.Entry == se.Value:
		return usagef("%s %q: want %s", flag, se.Value, se.Want)
	}
	return usagef("%s %q: %q: want %s", flag, se.Value, se.Entry, se.Want)
}

// setupError is a step of acting on the config that failed before any
// rank started (nothing ran: exit 2), such as making the log directory.
// Step names the step as people read it ("--log-dir logs", "no directory
// for the log files"); Err is the cause; Hint, when set, follows the
// cause's words (" (set TMPDIR, or give --log-dir)"). With Paren, the
// cause's words stand in parentheses after Step instead of after a colon.
type setupError struct {
	Step  string
	Err   error
	Hint  string
	Paren bool
}

func (e *setupError) Error() string { return "mpspawn: " + e.Step + ": " + e.Err.Error() }
func (e *setupError) Unwrap() error { return e.Err }

// explain words an error that ended mpspawn before a rank started, or
// ended a job between rounds, in one line for people: a usage error as it
// is, the others from the fields of their types.
func explain(err error) string {
	var ue usageError
	var se *setupError
	var pe *launcher.PreloadError
	var ste *launcher.StartError
	switch {
	case errors.As(err, &ue):
		return ue.err.Error()
	case errors.As(err, &se) && se.Paren:
		return se.Step + " (" + describe(se.Err) + ")" + se.Hint
	case errors.As(err, &se):
		return se.Step + ": " + describe(se.Err) + se.Hint
	case errors.As(err, &pe):
		return fmt.Sprintf("--preload %s: %s", pe.Module, pe.Err)
	case errors.As(err, &ste):
		return fmt.Sprintf("rank %d could not start: %s", ste.Rank, describe(ste.Err))
	}
	return rendezvousError(err)
}

// describe words an error from outside this package for one line of a
// message, from the fields of the standard library's typed errors where it
// can (so "mkdir /x/logs: permission denied", without a package prefix).
func describe(err error) string {
	var pe *fs.PathError
	var se *os.SyscallError
	var ee *exec.Error
	var ne *gpu.NVMLError
	var nr *diag.NoRanksError
	if s, ok := describeFile(err); ok {
		return s
	}
	switch {
	case errors.As(err, &nr):
		return fmt.Sprintf("process %d runs no mpspawn ranks", nr.Launcher)
	case errors.As(err, &ee): // before the *fs.PathError it may wrap: it names the program
		return fmt.Sprintf("%s: %v", ee.Name, ee.Err)
	case errors.As(err, &pe):
		return fmt.Sprintf("%s %s: %v", pe.Op, pe.Path, pe.Err)
	case errors.As(err, &se):
		return fmt.Sprintf("%s: %v", se.Syscall, se.Err)
	case errors.As(err, &ne):
		return gpuReason(err)
	case errors.Is(err, context.DeadlineExceeded): // a step bounded in time, such as setting up the c10d etcd server
		return "no answer"
	}
	return err.Error()
}
