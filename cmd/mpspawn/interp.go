package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// The interpreter that runs Python scripts, first found (docs in the
// README, "Which Python"):
//
//  1. --python PATH;
//  2. $PYTHON_EXEC;
//  3. the Python environment mpspawn is installed in: a python3 (or
//     python) beside mpspawn's own executable, as pip puts both in a
//     venv's or conda env's bin/ — so /path/venv/bin/mpspawn runs the
//     venv's Python even when the venv is not activated, as torchrun does;
//  4. the active virtualenv ($VIRTUAL_ENV) or conda env ($CONDA_PREFIX);
//  5. python3 on PATH.
//
// Except for the first two, the ranks' argv[0] is the interpreter's full
// path, so that Python finds its environment (a venv's python3 is a
// symlink to the base interpreter: run by name, it would be the base one).

// interpSource is where the chosen interpreter came from.
type interpSource int

const (
	fromFlag interpSource = iota
	fromPythonExec
	fromInstallEnv
	fromVirtualEnv
	fromCondaEnv
	fromPath
)

// interpreter is the Python that runs scripts.
type interpreter struct {
	Name   string       // argv[0] of the ranks: as given for 1 and 2, else a full path
	Path   string       // Name looked up on PATH
	Source interpSource // where it came from
	Dir    string       // the environment's directory, for 3 and 4
}

// String says which Python and why, for the note and the summary:
// "/v/bin/python3 (the environment mpspawn is installed in, /v)".
func (in interpreter) String() string {
	path := in.Path
	if path == "" {
		path = in.Name
	}
	switch in.Source {
	case fromFlag:
		return fmt.Sprintf("%s (--python %s)", path, in.Name)
	case fromPythonExec:
		return fmt.Sprintf("%s (PYTHON_EXEC=%s)", path, in.Name)
	case fromInstallEnv:
		return fmt.Sprintf("%s (the environment mpspawn is installed in, %s)", path, in.Dir)
	case fromVirtualEnv:
		return fmt.Sprintf("%s (the active virtualenv, VIRTUAL_ENV=%s)", path, in.Dir)
	case fromCondaEnv:
		return fmt.Sprintf("%s (the active conda env, CONDA_PREFIX=%s)", path, in.Dir)
	}
	return fmt.Sprintf("%s (%s on PATH)", path, in.Name)
}

// Noted reports whether the choice deserves a note at start: it does when
// the user did not name the interpreter.
func (in interpreter) Noted() bool { return in.Source != fromFlag && in.Source != fromPythonExec }

// choosePython picks the interpreter in the documented order. flag is
// --python's value when it was given on the command line (or by
// PET_PYTHON), getenv reads the environment, and self is mpspawn's own
// executable (empty when unknown).
func choosePython(flag string, getenv func(string) string, self string) interpreter {
	if flag != "" {
		return interpreter{Name: flag, Source: fromFlag}
	}
	if py := getenv("PYTHON_EXEC"); py != "" {
		return interpreter{Name: py, Source: fromPythonExec}
	}
	if self != "" {
		dir := filepath.Dir(self)
		if py := envPython(dir); py != "" {
			return interpreter{Name: py, Source: fromInstallEnv, Dir: filepath.Dir(dir)}
		}
	}
	for _, e := range []struct {
		name string
		src  interpSource
	}{{"VIRTUAL_ENV", fromVirtualEnv}, {"CONDA_PREFIX", fromCondaEnv}} {
		if root := getenv(e.name); root != "" {
			if py := envPython(filepath.Join(root, "bin")); py != "" {
				return interpreter{Name: py, Source: e.src, Dir: root}
			}
		}
	}
	return interpreter{Name: "python3", Source: fromPath}
}

// envPython is the python3 (or python) executable in bin, or "".
func envPython(bin string) string {
	for _, name := range []string{"python3", "python"} {
		p := filepath.Join(bin, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// selfExecutable is the path mpspawn was installed at, for choosePython:
// the link /proc/self/exe names (the file, not a symlink to it).
func selfExecutable() string {
	p, err := os.Executable()
	if err != nil {
		return ""
	}
	return p
}

// probeTimeout bounds each interpreter's `import X` when looking for one
// that has the module a rank could not import.
const probeTimeout = 10 * time.Second

// interpretersWith lists the interpreters on this machine, other than
// used, that can import module: the usual places (/usr/bin/python3,
// /usr/local/bin/python3, every python3 on PATH, the active venv and
// conda env, pyenv versions, conda envs under the home directory), each
// tried with a bounded `python -c 'import MODULE'`, all at once. The
// result is sorted and has no duplicates.
func interpretersWith(ctx context.Context, module, used string, getenv func(string) string) []string {
	if module == "" || len(module) > 200 || !validModule(module) {
		return nil
	}
	cands := candidateInterpreters(getenv)
	usedAbs := absPath(used, getenv)
	ok := make([]bool, len(cands))
	var wg sync.WaitGroup
	for i, c := range cands {
		if c == usedAbs {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, probeTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, c, "-c", "import "+module)
			cmd.Env = probeEnv()
			cmd.WaitDelay = time.Second
			ok[i] = cmd.Run() == nil
		}()
	}
	wg.Wait()
	var found []string
	for i, c := range cands {
		if ok[i] {
			found = append(found, c)
		}
	}
	return found
}

// probeEnv is the environment of a probe: the user's, without what would
// make every interpreter see one environment's modules.
func probeEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// candidateInterpreters are the places an interpreter is usually found,
// as absolute paths that exist, without duplicates.
func candidateInterpreters(getenv func(string) string) []string {
	var cands []string
	add := func(paths ...string) {
		for _, p := range paths {
			if !fileExecutable(p) {
				continue
			}
			cands = append(cands, canonical(p))
		}
	}
	add("/usr/bin/python3", "/usr/local/bin/python3")
	for _, dir := range filepath.SplitList(getenv("PATH")) {
		if filepath.IsAbs(dir) && !strings.Contains(dir, "/.pyenv/shims") {
			add(filepath.Join(dir, "python3"))
		}
	}
	for _, name := range []string{"VIRTUAL_ENV", "CONDA_PREFIX"} {
		if root := getenv(name); root != "" {
			add(filepath.Join(root, "bin", "python3"))
		}
	}
	if home := getenv("HOME"); home != "" {
		for _, pattern := range []string{
			".pyenv/versions/*/bin/python3",
			".pyenv/versions/*/envs/*/bin/python3",
			"miniconda3/bin/python3", "miniconda3/envs/*/bin/python3",
			"anaconda3/bin/python3", "anaconda3/envs/*/bin/python3",
			"miniforge3/bin/python3", "miniforge3/envs/*/bin/python3",
			".venv/bin/python3", "venv/bin/python3",
		} {
			m, _ := filepath.Glob(filepath.Join(home, pattern))
			add(m...)
		}
	}
	sort.Strings(cands)
	return slicesCompact(cands)
}

// canonical is p with its directory's real path (/bin is /usr/bin on a
// merged /usr) and its own name: a venv's python3 links to the base
// interpreter but runs another environment, so the link itself is kept.
func canonical(p string) string {
	if dir, err := filepath.EvalSymlinks(filepath.Dir(p)); err == nil {
		return filepath.Join(dir, filepath.Base(p))
	}
	return filepath.Clean(p)
}

func fileExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// absPath is name as an absolute path: itself when it has a slash, else
// looked up on the PATH getenv gives.
func absPath(name string, getenv func(string) string) string {
	if strings.Contains(name, "/") {
		if a, err := filepath.Abs(name); err == nil {
			return canonical(a)
		}
		return name
	}
	for _, dir := range filepath.SplitList(getenv("PATH")) {
		if p := filepath.Join(dir, name); filepath.IsAbs(p) && fileExecutable(p) {
			return canonical(p)
		}
	}
	return name
}

func slicesCompact(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// missingModule finds the module a Python rank could not import in the
// text of its error (the error file's message or its stderr tail):
// "ModuleNotFoundError: No module named 'torch'" gives "torch" (the top
// package: 'torch.distributed' gives "torch", what --python must provide).
func missingModule(text string) string {
	const marker = "No module named '"
	i := strings.LastIndex(text, marker)
	if i < 0 {
		return ""
	}
	rest := text[i+len(marker):]
	j := strings.IndexByte(rest, '\'')
	if j < 0 {
		return ""
	}
	m, _, _ := strings.Cut(rest[:j], ".")
	if m == "" || !validModule(m) {
		return ""
	}
	return m
}
