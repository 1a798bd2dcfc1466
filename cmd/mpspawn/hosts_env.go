package main

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// envFile is what DeepSpeed's .deepspeed_env is to its launcher: NAME=VALUE
// lines, in the working directory or else the home directory, passed to
// every host of a job started over ssh.
const envFile = ".mpspawn_env"

// travelPrefixes are the variables a job started over ssh passes to every
// host by default: those of NCCL, CUDA (but CUDA_VISIBLE_DEVICES, which
// names this machine's GPUs), Python's path, OpenMP and MKL, PyTorch,
// Hugging Face, Weights & Biases and MLflow, gloo, UCX and libfabric.
var travelPrefixes = []string{"NCCL_", "CUDA_", "PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONWARNINGS", "OMP_", "MKL_",
	"TORCH_", "HF_", "TRANSFORMERS_", "WANDB_", "MLFLOW_", "GLOO_", "UCX_", "FI_"}

// stayHome are variables that name this machine's own resources.
var stayHome = []string{"CUDA_VISIBLE_DEVICES", "MPSPAWN_RDZV_TOKEN"}

// travellingEnv is the environment every host gets: the default list from
// environ, then .mpspawn_env's lines, then --env's NAME (its value in
// environ) or NAME=VALUE, later ones winning; sorted by name.
func travellingEnv(environ, flags []string, cwd string) ([]string, error) {
	env, here := map[string]string{}, map[string]string{}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		here[k] = v
		if !slices.Contains(stayHome, k) && slices.ContainsFunc(travelPrefixes, func(p string) bool { return strings.HasPrefix(k, p) }) {
			env[k] = v
		}
	}
	if err := readEnvFile(env, cwd); err != nil {
		return nil, err
	}
	for _, f := range flags {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			if v, ok = here[k]; !ok {
				return nil, usagef("--env %s: not set here; give --env %s=VALUE", k, k)
			}
		}
		if !validEnvName(k) {
			return nil, usagef("--env %q: not a variable name", f)
		}
		env[k] = v
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out, nil
}

// readEnvFile adds .mpspawn_env's variables (the working directory's, else
// the home directory's) to env.
func readEnvFile(env map[string]string, cwd string) error {
	path := filepath.Join(cwd, envFile)
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		home, _ := os.UserHomeDir()
		if home == "" {
			return nil
		}
		path = filepath.Join(home, envFile)
		f, err = os.Open(path)
	}
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return usagef("%s: %v", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok || !validEnvName(k) {
			return usagef("%s:%d: want NAME=VALUE", path, n)
		}
		env[k] = v
	}
	if err := sc.Err(); err != nil {
		return usagef("%s: %v", path, err)
	}
	return nil
}

// validEnvName reports whether k is a shell variable name.
func validEnvName(k string) bool {
	if k == "" || (k[0] >= '0' && k[0] <= '9') {
		return false
	}
	for _, r := range k {
		if r != '_' && !(r >= 'A' && r <= 'Z') && !(r >= 'a' && r <= 'z') && !(r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// shellQuote quotes s for a POSIX shell: the remote command line ssh runs.
func shellQuote(s string) string {
	if s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@,+%", r))
	}) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// shellJoin quotes and joins args.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}
