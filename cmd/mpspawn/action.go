package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/rendezvous"
	"github.com/urfave/cli/v2"
)

// config is the validated command line.
type config struct {
	nproc       int
	rdzv        rendezvous.Config
	runID       string
	role        string
	startMethod string
	preload     []string
	method      launcher.StartMethod // started before placement; nil in a dry run
	nprocSpec   nprocSpec
	path        string   // resolved program
	interpreter string   // for scripts: the Python that runs them, and where it came from
	argv        []string // rank argv
	logDir      string
	keepLogDir  bool
	output      *launcher.Output
	grace       time.Duration
	summaryJSON string
	place       *placement
	dryRun      bool
	ipc         bool
	json        bool
	diag        diagConfig
	sched       *sched    // the scheduler that gave defaults; nil when none
	multi       multinode // --rdzv-*, --max-restarts, --local-addr
}

func action(c *cli.Context) error {
	if c.IsSet(fDumpStacks) {
		return dumpStacks(c)
	}
	cfg, err := parseConfig(c)
	if err != nil {
		return err
	}
	if !cfg.dryRun {
		// Before placement loads NVML: a forkserver, and every rank forked
		// from it, must inherit nothing of the launcher's GPU state, and its
		// preload overlaps with the rest of the set-up.
		m, err := launcher.NewStartMethod(cfg.startMethod, launcher.ForkserverConfig{
			Python: cfg.path, Preload: cfg.preload, Main: cfg.argv[1:], Stderr: c.App.ErrWriter,
		})
		if err != nil {
			return err
		}
		defer m.Close()
		cfg.method = m
	}
	if err := cfg.planRanks(c); err != nil {
		return err
	}
	if cfg.dryRun {
		return dryRun(c, cfg)
	}
	return launch(c, cfg)
}

// planRanks places the ranks on this machine (or the --topology snapshot)
// and validates what depends on their number.
func (cfg *config) planRanks(c *cli.Context) error {
	var err error
	if cfg.place, err = placeRanks(c, cfg.nprocSpec, c.App.ErrWriter); err != nil {
		return err
	}
	cfg.nproc = len(cfg.place.plan.Ranks)
	cfg.rdzv.NProcPerNode = cfg.nproc
	for r := range cfg.output.Filter {
		if r >= cfg.nproc {
			return usagef("--local-ranks-filter %q: %d is not a local rank (0..%d)", c.String(fRanksFilter), r, cfg.nproc-1)
		}
	}
	return nil
}

// parseConfig validates every flag and the program before anything starts.
// It does not look at this machine: planRanks does.
func parseConfig(c *cli.Context) (*config, error) {
	cfg := &config{runID: c.String(fRunID), role: c.String(fRole), summaryJSON: c.String(fSummaryJSON), dryRun: c.Bool(fDryRun), json: c.Bool(fJSON), ipc: c.Bool(fIPC)}
	if cfg.json && !cfg.dryRun {
		return nil, usagef("--json goes with --dry-run (or use mpspawn gpus --json)")
	}
	if t := c.String(fTopology); t != "" && !cfg.dryRun {
		// A snapshot describes another machine: its GPUs and CPUs are not here.
		return nil, usagef("--topology %s plans against another machine's snapshot and goes with --dry-run; to launch here, drop --topology", t)
	}
	var err error
	if cfg.nprocSpec, err = parseNproc(c.String(fNproc)); err != nil {
		return nil, err
	}
	if cfg.nprocSpec.mode == "n" {
		if err := checkCapacity(cfg.nprocSpec.n); err != nil {
			return nil, err
		}
	}
	nnodes, _, err := parseNNodes(c)
	if err != nil {
		return nil, err
	}
	cfg.rdzv = rendezvous.Config{
		NNodes: nnodes, NodeRank: c.Int(fNodeRank), NProcPerNode: 1, // set by planRanks, which places at least 1
		MasterAddr: c.String(fMasterAddr), MasterPort: c.Int(fMasterPort), Standalone: c.Bool(fStandalone),
	}
	if err := cfg.applyScheduler(c); err != nil {
		return nil, err
	}
	if p := c.Int(fMasterPort); c.IsSet(fMasterPort) && (p < 1 || p > 65535) {
		return nil, usagef("--master-port %d: want a port between 1 and 65535", p)
	}
	if cfg.rdzv.Standalone && c.IsSet(fMasterAddr) {
		return nil, usagef("--standalone runs on this host at 127.0.0.1 and cannot take --master-addr %s: drop one of them", c.String(fMasterAddr))
	}
	if cfg.rdzv.Standalone && !c.IsSet(fMasterPort) {
		cfg.rdzv.MasterPort = 0
	}
	if err := cfg.parseMultinode(c); err != nil {
		return nil, err
	}
	if err := cfg.rdzv.Validate(); err != nil {
		return nil, rendezvousUsage(err)
	}
	if err := checkMasterPort(c, cfg.rdzv); err != nil {
		return nil, err
	}
	if cfg.startMethod, err = parseStartMethod(c.String(fStartMethod)); err != nil {
		return nil, err
	}
	if cfg.preload, err = parsePreload(c, cfg.startMethod); err != nil {
		return nil, err
	}
	if cfg.grace, err = parseDuration(c.String(fGrace)); err != nil {
		return nil, err
	}
	if cfg.dryRun && c.NArg() == 0 {
		cfg.argv = []string{"SCRIPT"} // the plan does not depend on the program
	} else if cfg.path, cfg.argv, err = program(c); err != nil {
		return nil, err
	} else if !c.Bool(fNoPython) {
		cfg.interpreter = interpreterSource(c, cfg.path)
	}
	if cfg.output, err = parseOutput(c); err != nil {
		return nil, err
	}
	if cfg.logDir = c.String(fLogDir); cfg.logDir != "" {
		// Absolute, so that a rank that changes directory still finds its files.
		if cfg.logDir, err = filepath.Abs(cfg.logDir); err != nil {
			return nil, usagef("--log-dir %s: %v", c.String(fLogDir), err)
		}
	}
	cfg.keepLogDir = cfg.logDir != "" || c.String(fRedirects) != "0" || c.String(fTee) != "0"
	if cfg.summaryJSON != "" {
		if st, err := os.Stat(filepath.Dir(cfg.summaryJSON)); err != nil || !st.IsDir() {
			return nil, usagef("--summary-json %s: its directory does not exist", cfg.summaryJSON)
		}
		if st, err := os.Stat(cfg.summaryJSON); err == nil && st.IsDir() {
			return nil, usagef("--summary-json %s: is a directory; want a file path", cfg.summaryJSON)
		}
	}
	if cfg.diag, err = parseDiag(c); err != nil {
		return nil, err
	}
	if cfg.role == "" || strings.ContainsAny(cfg.role, "\x00\n") {
		return nil, usagef("--role %q: want a name", cfg.role)
	}
	switch {
	case cfg.runID == "":
		cfg.runID = randomID()
	case cfg.runID == "." || cfg.runID == ".." || strings.ContainsAny(cfg.runID, "/\x00"):
		// It names a directory under --log-dir: it must not climb out.
		return nil, usagef("--run-id %q: want a name without '/' (it names a directory under --log-dir)", cfg.runID)
	}
	return cfg, nil
}

// checkMasterPort finds an explicit --master-port that another process on
// this host already listens on, when this node hosts rank 0: rank 0 would
// otherwise fail in TCPStore with "address already in use".
func checkMasterPort(c *cli.Context, rc rendezvous.Config) error {
	if !c.IsSet(fMasterPort) || rc.NodeRank != 0 || c.Bool(fDryRun) {
		return nil
	}
	err := rendezvous.CheckPort(rc.MasterPort)
	if errors.Is(err, rendezvous.ErrPortInUse) {
		return usagef("--master-port %d: already in use on this host, and rank 0 listens there (MASTER_PORT): choose another port, or --standalone for a free one", rc.MasterPort)
	}
	return nil // another failure to listen is rank 0's to report
}

func parseStartMethod(s string) (string, error) {
	switch s {
	case "spawn", "forkserver":
		return s, nil
	case "fork":
		return "", usagef("--start-method fork is not supported: forking a launcher breaks CUDA and threads; use spawn or forkserver")
	}
	return "", usagef("--start-method %q: want spawn or forkserver", s)
}

// parsePreload checks --preload and where forkserver applies: it forks
// Python ranks only (see docs/forkserver.md for why not --no-python).
func parsePreload(c *cli.Context, method string) ([]string, error) {
	if method == "forkserver" && c.Bool(fNoPython) {
		return nil, usagef("--start-method forkserver forks Python ranks only; a --no-python program is exec'd either way, and spawn already does that as fast as a server could: use spawn")
	}
	v := c.String(fPreload)
	if v == "" {
		return nil, nil
	}
	if method != "forkserver" {
		return nil, usagef("--preload goes with --start-method forkserver")
	}
	var mods []string
	for _, m := range strings.Split(v, ",") {
		m = strings.TrimSpace(m)
		if !validModule(m) {
			return nil, usagef("--preload %q: %q is not a module name", v, m)
		}
		mods = append(mods, m)
	}
	return mods, nil
}

// validModule reports whether s is a dotted Python module name.
func validModule(s string) bool {
	for _, part := range strings.Split(s, ".") {
		if part == "" || (part[0] >= '0' && part[0] <= '9') {
			return false
		}
		for _, r := range part {
			if r != '_' && !unicode.IsLetter(r) && !unicode.IsDigit(r) {
				return false
			}
		}
	}
	return true
}

// parseDuration accepts a Go duration (30s, 500ms) or a number of seconds.
func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		secs, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil {
			return 0, usagef("--grace-period %q: want a duration such as 30s or 500ms", s)
		}
		d = time.Duration(secs * float64(time.Second))
	}
	if d <= 0 {
		return 0, usagef("--grace-period %q: want a positive duration", s)
	}
	return d, nil
}

// program resolves the rank program and its argv.
func program(c *cli.Context) (string, []string, error) {
	args := c.Args().Slice()
	if len(args) == 0 {
		return "", nil, usagef("no script given: usage: mpspawn [flags] SCRIPT [ARGS...]")
	}
	target, rest := args[0], args[1:]
	if c.Bool(fNoPython) {
		if c.Bool(fModule) {
			return "", nil, usagef("--module and --no-python cannot be combined")
		}
		path, err := exec.LookPath(target)
		if err != nil {
			return "", nil, usagef("--no-python %s: not an executable program (%v)", target, unwrapExec(err))
		}
		return path, append([]string{target}, rest...), nil
	}
	python := c.String(fPython)
	path, err := exec.LookPath(python)
	if err != nil {
		return "", nil, usagef("--python %s: interpreter not found (%v)", python, unwrapExec(err))
	}
	if c.Bool(fModule) {
		return path, append([]string{python, "-u", "-m", target}, rest...), nil
	}
	if st, err := os.Stat(target); err != nil || st.IsDir() {
		return "", nil, usagef("script %s: no such file", target)
	}
	return path, append([]string{python, "-u", target}, rest...), nil
}

// interpreterSource says which Python runs the scripts and why:
// "/usr/bin/python3 (python3 on PATH)".
func interpreterSource(c *cli.Context, path string) string {
	py := c.String(fPython)
	switch env, ok := os.LookupEnv("PYTHON_EXEC"); {
	case ok && env == py:
		return fmt.Sprintf("%s (PYTHON_EXEC=%s)", path, py)
	case c.IsSet(fPython):
		return fmt.Sprintf("%s (--python %s)", path, py)
	}
	return fmt.Sprintf("%s (%s on PATH)", path, py)
}

func unwrapExec(err error) error {
	if ee, ok := err.(*exec.Error); ok {
		return ee.Err
	}
	return err
}

func parseOutput(c *cli.Context) (*launcher.Output, error) {
	out := &launcher.Output{Prefix: c.String(fPrefix), Timestamps: c.Bool(fTimestamps)}
	if c.Bool(fNoPrefix) {
		out.Prefix = ""
	}
	var err error
	if out.Redirects, err = launcher.ParseStreams(c.String(fRedirects)); err != nil {
		return nil, streamsUsage("--"+fRedirects, err)
	}
	if out.Tee, err = launcher.ParseStreams(c.String(fTee)); err != nil {
		return nil, streamsUsage("--"+fTee, err)
	}
	if f := c.String(fRanksFilter); f != "" {
		out.Filter = map[int]bool{}
		for _, s := range strings.Split(f, ",") {
			r, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || r < 0 {
				return nil, usagef("--local-ranks-filter %q: %q is not a local rank", f, s)
			}
			out.Filter[r] = true
		}
	}
	return out, nil
}

// randomID is a run id: 12 hex digits, unique enough to name a log dir.
func randomID() string {
	return fmt.Sprintf("%012x", rand.Uint64()>>16)
}
