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

	"github.com/mpspawn/mpspawn/gpu"
	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/rendezvous"
	"github.com/urfave/cli/v2"
)

// config is the command line, read from the flags, PET_* and the
// scheduler's defaults and validated: a plain value, the only thing the act
// phase (act) takes. Every usage error is found while it is made.
type config struct {
	nprocSpec   nprocSpec
	nprocArg    string            // --nproc-per-node as given, for messages
	placeOpts   placeConfig       // the placement flags
	rdzv        rendezvous.Config // NProcPerNode is 1: the placement sets it
	runID       string
	role        string
	startMethod string
	preload     []string
	path        string       // resolved program
	interp      *interpreter // for scripts: the Python that runs them, and where it came from; nil otherwise
	argv        []string     // rank argv
	script      string       // the program's name, as the summary shows it
	logDir      string       // absolute
	logDirArg   string       // --log-dir as given, for messages
	keepLogDir  bool
	output      outputConfig
	grace       time.Duration
	summaryJSON string
	junitXML    string    // --junit-xml FILE
	started     time.Time // when mpspawn started, for the reports
	dryRun      bool
	ipc         bool
	json        bool
	diag        diagConfig
	sched       *sched    // the scheduler that gave defaults; nil when none
	multi       multinode // --rdzv-*, --max-restarts, --local-addr
	dumpStacks  int       // --dump-stacks PID: the only thing to do; 0 when not given
	fanout      *fanout   // --hostfile/--hosts: this mpspawn drives the job over ssh; nil otherwise
	sshNonce    string    // --ssh-node: marks the summary this node sends its driver; "" otherwise
}

// placeConfig is the validated placement flags.
type placeConfig struct {
	gpusPerRank int
	bind        gpu.CPUBind
	visibility  gpu.Visibility
	topology    string // --topology FILE, or "" for this machine
	// sayCPUs is set when --gpus-per-rank or --gpu-visibility was given:
	// a job that runs on CPUs with a number of ranks then says why.
	sayCPUs bool
}

// outputConfig is the validated console and log file flags.
type outputConfig struct {
	prefix         string
	timestamps     bool
	filter         map[int]bool // nil: every rank
	filterArg      string       // --local-ranks-filter as given, for messages
	redirects, tee launcher.StreamMap
}

// parseConfig reads and validates every flag and the program before
// anything starts. It does not look at this machine's GPUs: the plan does.
func parseConfig(c *cli.Context) (*config, error) {
	if c.IsSet(fDumpStacks) {
		return parseDumpStacks(c)
	}
	cfg := &config{runID: c.String(fRunID), role: c.String(fRole), summaryJSON: c.String(fSummaryJSON),
		junitXML: c.String(fJUnitXML), started: time.Now(),
		dryRun: c.Bool(fDryRun), json: c.Bool(fJSON), ipc: c.Bool(fIPC), nprocArg: c.String(fNproc)}
	if cfg.json && !cfg.dryRun {
		return nil, usagef("--json goes with --dry-run (or use mpspawn gpus --json)")
	}
	if c.IsSet(fRunID) && cfg.runID == "" {
		return nil, usagef("--run-id \"\": want a name (leave the flag out for a random one)")
	}
	var err error
	if cfg.placeOpts, err = parsePlace(c, cfg.dryRun); err != nil {
		return nil, err
	}
	if cfg.nprocSpec, err = parseNproc(cfg.nprocArg); err != nil {
		return nil, err
	}
	if cfg.nprocSpec.mode == "n" {
		if err := checkCapacity(cfg.nprocSpec.n); err != nil {
			return nil, err
		}
	}
	if cfg.fanout, err = parseFanout(c); err != nil {
		return nil, err
	}
	cfg.sshNonce, _ = c.App.Metadata[sshNodeKey].(string)
	if cfg.fanout != nil {
		err = cfg.parseFanoutRendezvous(c)
	} else {
		err = cfg.parseRendezvous(c)
	}
	if err != nil {
		return nil, err
	}
	if err := cfg.parseProgram(c); err != nil {
		return nil, err
	}
	if err := cfg.parseFiles(c); err != nil {
		return nil, err
	}
	if cfg.diag, err = parseDiag(c); err != nil {
		return nil, err
	}
	return cfg, cfg.checkNames()
}

// parsePlace reads the placement flags.
func parsePlace(c *cli.Context, dryRun bool) (placeConfig, error) {
	p := placeConfig{gpusPerRank: c.Int(fGPUsPerRank), topology: c.String(fTopology),
		sayCPUs: c.IsSet(fGPUsPerRank) || c.IsSet(fGPUVisibility)}
	if p.topology != "" && !dryRun {
		// A snapshot describes another machine: its GPUs and CPUs are not here.
		return p, usagef("--topology %s plans against another machine's snapshot and goes with --dry-run; to launch here, drop --topology", p.topology)
	}
	if p.gpusPerRank < 1 {
		return p, usagef("--gpus-per-rank %d: want at least 1", p.gpusPerRank)
	}
	var err error
	if p.bind, err = gpu.ParseCPUBind(c.String(fCPUBind)); err != nil {
		return p, usagef("--cpu-bind %q: want none, numa or exclusive", c.String(fCPUBind))
	}
	if p.visibility, err = gpu.ParseVisibility(c.String(fGPUVisibility)); err != nil {
		return p, usagef("--gpu-visibility %q: want local-rank or isolate", c.String(fGPUVisibility))
	}
	return p, nil
}

// parseRendezvous reads where this node stands in the job: the static
// flags, the scheduler's defaults, and the multi-node flags.
func (cfg *config) parseRendezvous(c *cli.Context) error {
	nnodes, maxNodes, err := parseNNodes(c)
	if err != nil {
		return err
	}
	if c.IsSet(fMasterAddr) && c.String(fMasterAddr) == "" && maxNodes > 1 {
		return usagef("--master-addr \"\": want the host name or IP address of node 0, which every one of the %s nodes must reach", c.String(fNNodes))
	}
	cfg.rdzv = rendezvous.Config{
		NNodes: nnodes, NodeRank: c.Int(fNodeRank), NProcPerNode: 1, // set by the plan, which places at least 1
		MasterAddr: c.String(fMasterAddr), MasterPort: c.Int(fMasterPort), Standalone: c.Bool(fStandalone),
	}
	if err := cfg.applyScheduler(c); err != nil {
		return err
	}
	if p := c.Int(fMasterPort); c.IsSet(fMasterPort) && (p < 1 || p > 65535) {
		return usagef("--master-port %d: want a port between 1 and 65535", p)
	}
	if cfg.rdzv.Standalone && c.IsSet(fMasterAddr) {
		return usagef("--standalone runs on this host at 127.0.0.1 and cannot take --master-addr %s: drop one of them", c.String(fMasterAddr))
	}
	if cfg.rdzv.Standalone && !c.IsSet(fMasterPort) {
		cfg.rdzv.MasterPort = 0
	}
	if err := cfg.parseMultinode(c); err != nil {
		return err
	}
	if err := cfg.rdzv.Validate(); err != nil {
		return rendezvousUsage(err)
	}
	return checkMasterPort(c, cfg.rdzv)
}

// parseProgram reads how the ranks start and what they run.
func (cfg *config) parseProgram(c *cli.Context) error {
	var err error
	if cfg.startMethod, err = parseStartMethod(c.String(fStartMethod)); err != nil {
		return err
	}
	if cfg.preload, err = parsePreload(c, cfg.startMethod); err != nil {
		return err
	}
	if cfg.grace, err = parseDuration(c.String(fGrace)); err != nil {
		return err
	}
	if cfg.dryRun && c.NArg() == 0 {
		cfg.argv = []string{"SCRIPT"} // the plan does not depend on the program
		return nil
	}
	if cfg.path, cfg.argv, cfg.interp, err = program(c); err != nil {
		return err
	}
	cfg.script = filepath.Base(c.Args().First())
	return nil
}

// parseFiles reads the console and file flags.
func (cfg *config) parseFiles(c *cli.Context) error {
	var err error
	if cfg.output, err = parseOutput(c); err != nil {
		return err
	}
	if cfg.nprocSpec.mode == "n" {
		if err := cfg.checkFilter(cfg.nprocSpec.n); err != nil {
			return err
		}
	}
	if cfg.logDirArg = c.String(fLogDir); cfg.logDirArg != "" {
		// Absolute, so that a rank that changes directory still finds its files.
		if cfg.logDir, err = filepath.Abs(cfg.logDirArg); err != nil {
			return usagef("--log-dir %s: %v", cfg.logDirArg, err)
		}
	}
	cfg.keepLogDir = cfg.logDir != "" || c.String(fRedirects) != "0" || c.String(fTee) != "0"
	if cfg.summaryJSON != "" && cfg.summaryJSON != "-" {
		if st, err := os.Stat(filepath.Dir(cfg.summaryJSON)); err != nil || !st.IsDir() {
			return usagef("--summary-json %s: its directory does not exist", cfg.summaryJSON)
		}
		if st, err := os.Stat(cfg.summaryJSON); err == nil && st.IsDir() {
			return usagef("--summary-json %s: is a directory; want a file path", cfg.summaryJSON)
		}
	}
	return nil
}

// checkFilter finds a --local-ranks-filter rank that is not one of nproc.
func (cfg *config) checkFilter(nproc int) error {
	for r := range cfg.output.filter {
		if r >= nproc {
			return usagef("--local-ranks-filter %q: %d is not a local rank (0..%d)", cfg.output.filterArg, r, nproc-1)
		}
	}
	return nil
}

// checkNames checks --role, and --run-id or gives a random one.
func (cfg *config) checkNames() error {
	if cfg.role == "" || strings.ContainsAny(cfg.role, "\x00\n") {
		return usagef("--role %q: want a name", cfg.role)
	}
	switch {
	case cfg.runID == "":
		cfg.runID = randomID()
	case cfg.runID == "." || cfg.runID == ".." || strings.ContainsAny(cfg.runID, "/\x00"):
		// It names a directory under --log-dir: it must not climb out.
		return usagef("--run-id %q: want a name without '/' (it names a directory under --log-dir)", cfg.runID)
	}
	return nil
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

// program resolves the rank program and its argv, and for scripts the
// interpreter that runs them (see choosePython for the order).
func program(c *cli.Context) (string, []string, *interpreter, error) {
	args := c.Args().Slice()
	if len(args) == 0 {
		return "", nil, nil, usagef("no script given: usage: mpspawn [flags] SCRIPT [ARGS...]")
	}
	target, rest := args[0], args[1:]
	if c.Bool(fNoPython) {
		if c.Bool(fModule) {
			return "", nil, nil, usagef("--module and --no-python cannot be combined")
		}
		path, err := exec.LookPath(target)
		if err != nil {
			return "", nil, nil, usagef("--no-python %s: not an executable program (%v)", target, unwrapExec(err))
		}
		return path, append([]string{target}, rest...), nil, nil
	}
	in := choosePython(c.String(fPython), os.Getenv, selfExecutable())
	path, err := exec.LookPath(in.Name)
	if err != nil {
		switch in.Source {
		case fromFlag:
			return "", nil, nil, usagef("--python %s: interpreter not found (%v)", in.Name, unwrapExec(err))
		case fromPythonExec:
			return "", nil, nil, usagef("PYTHON_EXEC=%s: interpreter not found (%v)", in.Name, unwrapExec(err))
		}
		return "", nil, nil, usagef("%s: interpreter not found (%v): name one with --python PATH", in.Name, unwrapExec(err))
	}
	in.Path = path
	if c.Bool(fModule) {
		return path, append([]string{in.Name, "-u", "-m", target}, rest...), &in, nil
	}
	if st, err := os.Stat(target); err != nil || st.IsDir() {
		return "", nil, nil, usagef("script %s: no such file", target)
	}
	return path, append([]string{in.Name, "-u", target}, rest...), &in, nil
}

func unwrapExec(err error) error {
	var ee *exec.Error
	if errors.As(err, &ee) {
		return ee.Err
	}
	return err
}

func parseOutput(c *cli.Context) (outputConfig, error) {
	out := outputConfig{prefix: c.String(fPrefix), timestamps: c.Bool(fTimestamps), filterArg: c.String(fRanksFilter)}
	if c.Bool(fNoPrefix) {
		out.prefix = ""
	}
	var pe *launcher.PrefixError
	if err := launcher.CheckPrefix(out.prefix); errors.As(err, &pe) {
		return out, usagef("--%s %q: the ${ at byte %d is not closed by }", fPrefix, pe.Template, pe.At)
	}
	var err error
	if out.redirects, err = launcher.ParseStreams(c.String(fRedirects)); err != nil {
		return out, streamsUsage("--"+fRedirects, err)
	}
	if out.tee, err = launcher.ParseStreams(c.String(fTee)); err != nil {
		return out, streamsUsage("--"+fTee, err)
	}
	if f := out.filterArg; f != "" {
		out.filter = map[int]bool{}
		for _, s := range strings.Split(f, ",") {
			r, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || r < 0 {
				return out, usagef("--local-ranks-filter %q: %q is not a local rank", f, s)
			}
			out.filter[r] = true
		}
	}
	return out, nil
}

// randomID is a run id: 12 hex digits, unique enough to name a log dir.
func randomID() string {
	return fmt.Sprintf("%012x", rand.Uint64()>>16)
}
