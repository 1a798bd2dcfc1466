//go:build !linux

package ipc

// nofile is not known off Linux.
func nofile() uint64 { return 0 }
