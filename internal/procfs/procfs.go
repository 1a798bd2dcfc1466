// Package procfs reads what the launcher and its tests need of Linux's
// /proc: the processes there, a process's state and parent, and its
// environment.
package procfs

import (
	"bytes"
	"errors"
	"os"
	"strconv"
)

// Pids lists the processes in /proc.
func Pids() []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Stat returns pid's state letter ('R', 'S', 'D', 'T', 'Z', ...) and its
// parent's pid, from /proc/PID/stat.
func Stat(pid int) (state byte, ppid int, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// pid (comm) STATE PPID ...: comm may hold spaces and parentheses, so
	// cut at the last closing one.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("procfs: malformed stat of pid " + strconv.Itoa(pid))
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, errors.New("procfs: malformed stat of pid " + strconv.Itoa(pid))
	}
	ppid, err = strconv.Atoi(string(f[1]))
	return f[0][0], ppid, err
}

// Children lists ppid's children that have not exited (zombies left out).
func Children(ppid int) []int {
	var pids []int
	for _, pid := range Pids() {
		if st, pp, err := Stat(pid); err == nil && pp == ppid && st != 'Z' {
			pids = append(pids, pid)
		}
	}
	return pids
}

// HasEnv reports whether pid's environment (as it was when the process
// executed its program) holds the entry kv, "KEY=VALUE".
func HasEnv(pid int, kv string) bool {
	env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	return err == nil && bytes.Contains(append([]byte{0}, env...), []byte("\x00"+kv+"\x00"))
}

// Getenv returns the value of key in pid's environment (as it was when the
// process executed its program), and whether it is there.
func Getenv(pid int, key string) (string, bool) {
	env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return "", false
	}
	for _, kv := range bytes.Split(env, []byte{0}) {
		if k, v, ok := bytes.Cut(kv, []byte("=")); ok && string(k) == key {
			return string(v), true
		}
	}
	return "", false
}

// StateName is the state letter of process pid ("D" for uninterruptible
// sleep), or "unknown".
func StateName(pid int) string {
	if st, _, err := Stat(pid); err == nil {
		return string(st)
	}
	return "unknown"
}
