package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
)

// fakeEnv is a directory laid out as a Python environment: bin/python3, a
// link to a real interpreter, as venv makes it.
func fakeEnv(t *testing.T, root, python string) string {
	t.Helper()
	bin := filepath.Join(root, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(python, filepath.Join(bin, "python3")); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(bin, "python3")
}

func TestChoosePython(t *testing.T) {
	real, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3 on PATH")
	}
	dir := t.TempDir()
	install := filepath.Join(dir, "install")
	installPy := fakeEnv(t, install, real)
	venv := filepath.Join(dir, "venv")
	venvPy := fakeEnv(t, venv, real)
	conda := filepath.Join(dir, "conda")
	condaPy := fakeEnv(t, conda, real)
	bare := filepath.Join(dir, "gobin", "mpspawn") // no python beside it

	tests := []struct {
		name string
		flag string
		env  map[string]string
		self string
		want interpreter
	}{
		{"flag first", "/opt/py", map[string]string{"PYTHON_EXEC": "x", "VIRTUAL_ENV": venv}, filepath.Join(install, "bin", "mpspawn"),
			interpreter{Name: "/opt/py", Source: fromFlag}},
		{"PYTHON_EXEC second", "", map[string]string{"PYTHON_EXEC": "python3.11", "VIRTUAL_ENV": venv}, filepath.Join(install, "bin", "mpspawn"),
			interpreter{Name: "python3.11", Source: fromPythonExec}},
		{"installed env before the active one", "", map[string]string{"VIRTUAL_ENV": venv}, filepath.Join(install, "bin", "mpspawn"),
			interpreter{Name: installPy, Source: fromInstallEnv, Dir: install}},
		{"active venv", "", map[string]string{"VIRTUAL_ENV": venv, "CONDA_PREFIX": conda}, bare,
			interpreter{Name: venvPy, Source: fromVirtualEnv, Dir: venv}},
		{"active conda env", "", map[string]string{"CONDA_PREFIX": conda}, bare,
			interpreter{Name: condaPy, Source: fromCondaEnv, Dir: conda}},
		{"venv without python falls through", "", map[string]string{"VIRTUAL_ENV": filepath.Join(dir, "gobin")}, bare,
			interpreter{Name: "python3", Source: fromPath}},
		{"PATH last", "", nil, "", interpreter{Name: "python3", Source: fromPath}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := choosePython(tt.flag, func(k string) string { return tt.env[k] }, tt.self)
			if got != tt.want {
				t.Errorf("choosePython(%q, %v, %q) = %+v; want %+v", tt.flag, tt.env, tt.self, got, tt.want)
			}
		})
	}
}

func TestMissingModule(t *testing.T) {
	for text, want := range map[string]string{
		"Traceback ...\nModuleNotFoundError: No module named 'torch'\n": "torch",
		"ModuleNotFoundError: No module named 'torch.distributed'":      "torch",
		"ImportError: No module named 'yaml'":                           "yaml",
		"No module named 'x; rm -rf /'":                                 "",
		"ValueError: bad":                                               "",
	} {
		if got := missingModule(text); got != want {
			t.Errorf("missingModule(%q) = %q; want %q", text, got, want)
		}
	}
}

// TestInterpretersWith: a module only one environment has is found there,
// by a real import in each interpreter, and not in the one that failed.
func TestInterpretersWith(t *testing.T) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("no /usr/bin/python3")
	}
	dir := t.TempDir()
	venv := filepath.Join(dir, "venv")
	if out, err := exec.Command("/usr/bin/python3", "-m", "venv", "--without-pip", venv).CombinedOutput(); err != nil {
		t.Skipf("python3 -m venv: %v: %s", err, out)
	}
	out, err := exec.Command(filepath.Join(venv, "bin", "python3"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").Output()
	if err != nil {
		t.Fatal(err)
	}
	site := string(out[:len(out)-1])
	if err := os.WriteFile(filepath.Join(site, "mpspawn_probe_only_here.py"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"VIRTUAL_ENV": venv, "PATH": "/usr/bin:/bin", "HOME": dir}
	getenv := func(k string) string { return env[k] }
	got := interpretersWith(context.Background(), "mpspawn_probe_only_here", "/usr/bin/python3", getenv)
	want := []string{filepath.Join(venv, "bin", "python3")}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("interpretersWith(only in the venv) = %q; want %q", got, want)
	}
	// The interpreter that failed is never offered back.
	got = interpretersWith(context.Background(), "mpspawn_probe_only_here", want[0], getenv)
	if len(got) != 0 {
		t.Errorf("interpretersWith(used = the venv's) = %q; want none", got)
	}
	// Everyone has os.
	got = interpretersWith(context.Background(), "os", want[0], getenv)
	if len(got) == 0 || got[0] != "/usr/bin/python3" {
		t.Errorf("interpretersWith(os) = %q; want /usr/bin/python3 first", got)
	}
}
