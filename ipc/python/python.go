// Package python holds mpspawn's Python package, mpspawn (in mpspawn/ next
// to this file): mpspawn.ipc, the pure-Python client of the IPC broker,
// which is also the one Python module that passes file descriptors
// (SCM_RIGHTS). The launcher sends its source to the forkserver, which
// passes the ranks' descriptors with it; a wheel takes the package from
// this directory (FS); examples/python/mpspawn_ipc.py re-exports it.
package python

import (
	"embed"
	"io/fs"
)

//go:embed mpspawn/*.py
var files embed.FS

// FS returns the files of the Python package mpspawn, under "mpspawn/".
func FS() fs.FS { return files }

// IPCSource returns the source of the module mpspawn.ipc.
func IPCSource() string {
	b, err := files.ReadFile("mpspawn/ipc.py")
	if err != nil {
		panic("python: mpspawn/ipc.py is not embedded: " + err.Error()) // a build error
	}
	return string(b)
}
