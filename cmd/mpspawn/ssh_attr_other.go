//go:build !linux

package main

import "syscall"

// sessionAttr is nil off Linux: the nodes still stop when their ssh
// session's stdin ends.
func sessionAttr() *syscall.SysProcAttr { return nil }
