package job

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/mpspawn/mpspawn/internal/safefs"
	"github.com/mpspawn/mpspawn/ipc"
	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/launcher/contract"
	"github.com/mpspawn/mpspawn/place"
	"github.com/mpspawn/mpspawn/rendezvous"
)

// Job is one node's part of a launch: the same command started as
// NProcPerNode local ranks, each with the rank contract (see Contract).
type Job struct {
	// Command is the rank program's argv; Path is Command[0] resolved.
	Path    string
	Command []string
	Dir     string
	Env     []string // base environment, usually os.Environ()

	// Membership is who is in the job (package rendezvous).
	rendezvous.Membership
	RunID string
	// Attempt is the restarts spent before this round
	// (TORCHELASTIC_RESTART_COUNT, and attempt_<k> in LogDir);
	// MaxRestarts is the job's budget (TORCHELASTIC_MAX_RESTARTS).
	Attempt, MaxRestarts int
	// Role is the ranks' ROLE_NAME (and ${role_name} in the console
	// prefix); empty means DefaultRole.
	Role string

	// Ranks, when not nil, holds each local rank's placement (index =
	// local rank): extra environment (GPU visibility, OMP_NUM_THREADS for a
	// bound rank) and the CPUs it is bound to. It is filled from package
	// gpu's plan; the launcher does not interpret it.
	Ranks []place.Rank

	// LogDir is the base log directory; rank files and error files go
	// under LogDir/<run-id>/attempt_<k>/<local_rank>/, as torchrun lays them
	// out. When it is empty, error files go flat into ScratchDir
	// (error-<local_rank>.json), which costs less to create and remove.
	LogDir     string
	ScratchDir string
	Output     *launcher.Output

	// Options tune the ranks' Group; Options.Method is the start method
	// (nil: spawn), which the caller starts and closes.
	Options launcher.Options

	// IPC gives every rank a control channel to a broker (fd 3, named by
	// MPSPAWN_CONTROL_FD), so that ranks can share buffers zero-copy and
	// use queues (package ipc; examples/python/mpspawn_ipc.py).
	IPC bool

	// Notes receives the launcher's own notices (one line each); nil
	// discards them.
	Notes io.Writer

	// Started, when not nil, is called each round once every rank has
	// started, with their Group and the restarts spent (a live view
	// attaches to it: package live); the function it returns is called
	// once every rank has exited.
	Started func(g *launcher.Group, attempt int) (done func())

	tails    []*launcher.Tail // each local rank's stderr, kept by Specs
	ompNoted bool             // noteOMP has spoken
}

// AttemptDir is the directory of this attempt's per-rank files.
func (j *Job) AttemptDir() string {
	return filepath.Join(j.LogDir, j.RunID, "attempt_"+strconv.Itoa(j.Attempt))
}

// Contract is the rank contract of the job's ranks.
func (j *Job) Contract() *contract.Contract {
	c := &contract.Contract{
		Membership: j.Membership, RunID: j.RunID, Role: j.Role, StartMethod: j.Options.StartMethod().Name(),
		RestartCount: j.Attempt, MaxRestarts: j.MaxRestarts, ErrorFile: j.ErrorFile, Base: j.Env,
	}
	if j.LogDir != "" {
		c.LogDir = func(lr int) string { return filepath.Join(j.AttemptDir(), strconv.Itoa(lr)) }
	}
	return c
}

// Placement is local rank lr's placement (none when Ranks does not say).
func (j *Job) Placement(lr int) place.Rank {
	if lr < len(j.Ranks) {
		return j.Ranks[lr]
	}
	return place.Rank{}
}

// boundOMP lists the OMP_NUM_THREADS values the placement gives the ranks
// ("4,4,4,4"), or returns "" when the user set the variable or no rank is
// bound.
func (j *Job) boundOMP() string {
	if j.Contract().UserSet("OMP_NUM_THREADS") {
		return ""
	}
	vals := make([]string, j.NProcPerNode)
	bound := false
	for lr := range vals {
		vals[lr] = "1"
		if lr < len(j.Ranks) && j.Ranks[lr].Env["OMP_NUM_THREADS"] != "" {
			vals[lr], bound = j.Ranks[lr].Env["OMP_NUM_THREADS"], true
		}
	}
	if !bound {
		return ""
	}
	return strings.Join(vals, ",")
}

// ErrorFile is where a local rank is told to write its torchelastic error
// file (TORCHELASTIC_ERROR_FILE).
func (j *Job) ErrorFile(localRank int) string {
	if j.LogDir == "" {
		return filepath.Join(j.ScratchDir, "error-"+strconv.Itoa(localRank)+".json")
	}
	return filepath.Join(j.AttemptDir(), strconv.Itoa(localRank), "error.json")
}

// Specs builds the rank specs, creating each rank's directory under the
// attempt directory and removing error files left by an earlier run.
// Directories and files in LogDir are made by package safefs's rules: a
// link another user planted there is refused (a *safefs.LinkError).
func (j *Job) Specs() ([]launcher.Spec, error) {
	if j.Output == nil {
		j.Output = &launcher.Output{}
	}
	j.Output.Dir = j.AttemptDir()
	rc := j.Contract()
	j.Output.RoleName = rc.RoleName()
	var attempt *safefs.Dir
	if j.LogDir != "" {
		d, err := j.openAttemptDir()
		if err != nil {
			return nil, err
		}
		defer d.Close()
		attempt = d
	}
	specs := make([]launcher.Spec, j.NProcPerNode)
	j.tails = nil
	for lr := range specs {
		ef := j.ErrorFile(lr)
		if err := removeErrorFile(attempt, lr, ef); err != nil {
			return nil, err
		}
		rank := j.Rank(lr)
		stdout, stderr, err := j.Output.Open(rank, lr)
		if err != nil {
			return nil, err
		}
		tail := launcher.NewTail(stderr)
		j.tails = append(j.tails, tail)
		stderr = tail
		specs[lr] = launcher.Spec{
			Rank: rank, LocalRank: lr,
			Path: j.Path, Args: j.Command, Env: rc.Env(lr, j.Placement(lr)), Dir: j.Dir,
			Stdout: stdout, Stderr: stderr, ErrorFile: ef, CPUs: j.Placement(lr).CPUs,
		}
	}
	return specs, nil
}

// openAttemptDir makes (or opens) LogDir/<run-id>/attempt_<k>: LogDir by
// name, what is beneath it following no link.
func (j *Job) openAttemptDir() (*safefs.Dir, error) {
	base, err := safefs.MkdirAll(j.LogDir, 0o755)
	if err != nil {
		return nil, fmt.Errorf("launcher: log dir: %w", err)
	}
	defer base.Close()
	rel, err := filepath.Rel(j.LogDir, j.AttemptDir())
	if err != nil {
		return nil, fmt.Errorf("launcher: log dir: %w", err)
	}
	d, err := base.MkdirAll(rel, 0o755)
	if err != nil {
		return nil, fmt.Errorf("launcher: log dir: %w", err)
	}
	return d, nil
}

// removeErrorFile makes local rank lr's directory in the attempt directory
// (when there is one) and removes the error file ef an earlier run left.
func removeErrorFile(attempt *safefs.Dir, lr int, ef string) error {
	if attempt == nil {
		if err := os.Remove(ef); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("launcher: stale error file: %w", err)
		}
		return nil
	}
	sub, err := attempt.MkdirAll(strconv.Itoa(lr), 0o755)
	if err != nil {
		return fmt.Errorf("launcher: log dir: %w", err)
	}
	_ = sub.Close()
	if err := attempt.Remove(filepath.Join(strconv.Itoa(lr), filepath.Base(ef))); err != nil {
		return fmt.Errorf("launcher: stale error file: %w", err)
	}
	return nil
}

// AddStderr fills each rank's RankResult.Stderr with the last lines the
// rank wrote to its stderr (whether or not they were shown or kept in a
// file). Call it after Run.
func (j *Job) AddStderr(res *launcher.Result) {
	for i := range res.Ranks {
		if lr := res.Ranks[i].LocalRank; lr >= 0 && lr < len(j.tails) {
			res.Ranks[i].Stderr = j.tails[lr].String()
		}
	}
}

// Run starts the job, forwards the launcher's signals to the ranks (see
// ForwardedSignals) and waits for every rank. The error is about starting
// the job; how the ranks ended is in the Result.
func (j *Job) Run(ctx context.Context) (*launcher.Result, error) {
	// Before signals are caught: a signal during a forkserver's preload
	// ends the launcher with its default action, and the server with it
	// (its parent-death signal and the guard), as it would before a spawn.
	if err := j.Options.StartMethod().Ready(ctx); err != nil {
		return nil, err
	}
	j.noteOMP()
	// Catch signals before any rank starts so that none is lost. SIGPIPE is
	// caught (not ignored, which ranks would inherit) so that a closed
	// console does not kill the launcher.
	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, launcher.HandledSignals()...)
	defer signal.Stop(sigc)

	specs, err := j.Specs()
	if err != nil {
		return nil, err
	}
	defer j.Output.Close()
	var chans *launcher.Channels
	var broker *ipc.Broker
	if j.IPC {
		broker = ipc.NewBroker()
		if chans, err = launcher.AddChannels(broker, specs); err != nil {
			return nil, err
		}
	}
	g, err := launcher.Start(ctx, specs, j.Options)
	if err != nil {
		if chans != nil {
			chans.Close()
		}
		return nil, err
	}
	if chans != nil {
		chans.Serve(g, nil)
		defer func() {
			chans.Close()
			for _, leak := range broker.Close() {
				j.note("warning: %s", leak)
			}
		}()
	}
	if j.Started != nil {
		defer j.Started(g, j.Attempt)()
	}
	forwarded := make(chan struct{})
	go func() {
		defer close(forwarded)
		for {
			select {
			case sig := <-sigc:
				g.Forward(sig)
			case <-g.Done():
				return
			}
		}
	}()
	res := g.Wait()
	<-forwarded
	return res, nil
}

// noteOMP says what OMP_NUM_THREADS the ranks get when the user left it
// unset, once for the job: not again when a restart runs the ranks again.
func (j *Job) noteOMP() {
	if j.ompNoted {
		return
	}
	j.ompNoted = true
	switch bound := j.boundOMP(); {
	case bound != "":
		j.note("note: OMP_NUM_THREADS is not set; setting it for each rank to its share of the CPUs it is bound to (%s) (set it yourself to tune)", bound)
	case j.Contract().OMPDefault():
		j.note("note: OMP_NUM_THREADS is not set; setting it to 1 for each of the %d ranks (set it yourself to tune)", j.NProcPerNode)
	}
}

func (j *Job) note(format string, args ...any) {
	if j.Notes != nil {
		fmt.Fprintf(j.Notes, "mpspawn: "+format+"\n", args...)
	}
}
