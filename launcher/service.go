package launcher

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// ServiceSpec is a helper process that lives as long as the job, beside
// its ranks: the etcd server of a node that hosts a c10d rendezvous.
type ServiceSpec struct {
	Name string // for messages: "etcd"
	Path string
	Args []string // argv[1:]
	// Ready is a substring of the stderr line that says the service is
	// ready; StartService waits for it, at most ReadyTimeout.
	Ready        string
	ReadyTimeout time.Duration
}

// Service is a started ServiceSpec. It dies with the launcher (its
// parent-death signal is SIGKILL, tied to a thread kept for it). Stop it
// with Stop; a Service cannot be restarted.
type Service struct {
	spec ServiceSpec
	pid  int
	done chan struct{} // closed once the process is reaped
	log  *serviceLog
	stop sync.Once
}

// ErrServiceExited is wrapped by StartService's error when the service
// exited before it was ready.
var ErrServiceExited = errors.New("launcher: service exited before it was ready")

// Done is closed when the service's process has exited and been reaped.
func (s *Service) Done() <-chan struct{} { return s.done }

// Pid is the service's process id.
func (s *Service) Pid() int { return s.pid }

// Log is the end of what the service wrote to its stderr.
func (s *Service) Log() string { return s.log.String() }

// serviceLog keeps the last lines a service wrote, for messages.
type serviceLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *serviceLog) add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, line)
	if len(l.lines) > 20 {
		l.lines = l.lines[len(l.lines)-20:]
	}
}

func (l *serviceLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// scanReady reads the service's stderr line by line, keeping the last
// lines, and closes ready at the first line containing want. It returns at
// the end of the stream.
func scanReady(r io.Reader, log *serviceLog, want string, ready chan<- struct{}) {
	br := bufio.NewReader(r)
	signalled := false
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			log.add(strings.TrimRight(line, "\n"))
		}
		if !signalled && strings.Contains(line, want) {
			signalled = true
			close(ready)
		}
		if err != nil {
			return
		}
	}
}

func (s *Service) String() string { return fmt.Sprintf("%s (pid %d)", s.spec.Name, s.pid) }
