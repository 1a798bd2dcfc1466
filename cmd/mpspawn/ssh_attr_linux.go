package main

import "syscall"

// sessionAttr puts an ssh session in its own process group (Ctrl-C at the
// terminal reaches the driver, which stops the nodes in order) and kills it
// when the driver dies.
func sessionAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
