package main

import (
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mpspawn/mpspawn/launcher/job"
)

// The JUnit XML report of --junit-xml, in the shape of the Jenkins/Surefire
// schema that CI systems render (testdata/junit/junit.xsd is that shape; a
// test validates every report against it): one <testsuite> per attempt of
// the job, one <testcase> per rank, named "rank N (local L, node H)", its
// time the rank's wall time. A failed rank is a <failure> with the
// root-cause message and its traceback (or stderr tail); a rank mpspawn
// stopped is <skipped> with the reason; a cause that is no rank's failure
// (a timeout, a hang, an interrupt) and mpspawn's own error before any
// rank started are one failed testcase named "mpspawn".

type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Time     string       `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name       string          `xml:"name,attr"`
	Tests      int             `xml:"tests,attr"`
	Failures   int             `xml:"failures,attr"`
	Errors     int             `xml:"errors,attr"`
	Skipped    int             `xml:"skipped,attr"`
	Time       string          `xml:"time,attr"`
	Timestamp  string          `xml:"timestamp,attr,omitempty"`
	Hostname   string          `xml:"hostname,attr,omitempty"`
	Properties []junitProperty `xml:"properties>property,omitempty"`
	Cases      []junitCase     `xml:"testcase"`
}

type junitProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Skipped   *junitMessage `xml:"skipped,omitempty"`
	Failure   *junitMessage `xml:"failure,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr,omitempty"`
	Text    string `xml:",chardata"`
}

// junitReport is the report of a job that ran: s is its summary, started
// when the launcher started.
func junitReport(s *job.Summary, started time.Time) *junitSuites {
	class := "mpspawn." + s.RunID
	var suites []junitSuite
	// Earlier attempts: what is known of them is their root cause.
	for i, a := range s.Attempts {
		if i == len(s.Attempts)-1 {
			break
		}
		suite := junitSuite{Name: fmt.Sprintf("%s attempt %d", s.RunID, a.Round), Hostname: s.Host}
		if a.RootCause != nil {
			suite.Cases = append(suite.Cases, junitRank(*a.RootCause, class, true))
		}
		if a.Change != "" {
			suite.Properties = append(suite.Properties, junitProperty{"membership_change", a.Change})
		}
		suites = append(suites, suite.counted())
	}
	last := junitSuite{Name: s.RunID, Hostname: s.Host, Timestamp: started.UTC().Format("2006-01-02T15:04:05"),
		Properties: []junitProperty{{"run_id", s.RunID}, {"status", s.Status}, {"exit_code", fmt.Sprint(s.ExitCode)}}}
	if n := len(s.Attempts); n > 0 {
		last.Name = fmt.Sprintf("%s attempt %d", s.RunID, s.Attempts[n-1].Round)
	}
	if s.Interpreter != "" {
		last.Properties = append(last.Properties, junitProperty{"interpreter", s.Interpreter})
	}
	if c := jobCause(s); c != "" {
		last.Cases = append(last.Cases, junitCase{Name: "mpspawn", Classname: class, Time: seconds(time.Since(started)),
			Failure: &junitMessage{Message: c, Type: "mpspawn", Text: stacksText(s)}})
	}
	for _, r := range s.Ranks {
		root := s.RootCause != nil && s.RootCause.Rank == r.Rank && s.RootCause.Host == r.Host
		last.Cases = append(last.Cases, junitRank(r, class, root || failed(r)))
	}
	suites = append(suites, last.counted())
	return junitTotals(suites)
}

// junitError is the report of a launch that ended before any rank
// started: one failed testcase with mpspawn's own error.
func junitError(msg string, started time.Time) *junitSuites {
	host, _ := os.Hostname()
	suite := junitSuite{Name: "mpspawn", Hostname: host, Timestamp: started.UTC().Format("2006-01-02T15:04:05"),
		Cases: []junitCase{{Name: "mpspawn", Classname: "mpspawn", Time: seconds(time.Since(started)),
			Failure: &junitMessage{Message: msg, Type: "mpspawn"}}}}
	return junitTotals([]junitSuite{suite.counted()})
}

// jobCause is why mpspawn stopped the job when no rank's failure did.
func jobCause(s *job.Summary) string {
	switch {
	case s.RootCause != nil:
		return ""
	case s.Cause != "" && s.CauseNode != nil:
		return fmt.Sprintf("%s on node %d (%s)", s.Cause, s.CauseNode.NodeRank, s.CauseNode.Host)
	case s.Cause != "":
		return s.Cause
	case s.Interrupted != "":
		return "mpspawn got " + s.Interrupted + " and stopped the ranks"
	case s.Status != "succeeded":
		return fmt.Sprintf("the job failed (exit code %d)", s.ExitCode)
	}
	return ""
}

// failed reports whether a rank failed by its own doing (not stopped).
func failed(r job.RankSummary) bool {
	return !r.Stopped && (r.ExitCode != 0 || r.Signal != "")
}

func junitRank(r job.RankSummary, class string, failedRank bool) junitCase {
	c := junitCase{Name: fmt.Sprintf("rank %d (local %d, node %s)", r.Rank, r.LocalRank, r.Host),
		Classname: class, Time: seconds(time.Duration(r.Cost.WallSeconds * float64(time.Second)))}
	switch {
	case r.Stopped:
		reason := "stopped by mpspawn"
		if r.Note != "" {
			reason += ": " + r.Note
		}
		c.Skipped = &junitMessage{Message: reason}
	case failedRank:
		msg, typ, text := rankFailure(r)
		c.Failure = &junitMessage{Message: msg, Type: typ, Text: text}
	}
	return c
}

// rankFailure is a failed rank's message, its type (the exception's
// class when there is one) and its detail (traceback or stderr tail).
func rankFailure(r job.RankSummary) (msg, typ, text string) {
	exit := fmt.Sprintf("exit code %d", r.ExitCode)
	if r.Signal != "" {
		exit = "killed by " + r.Signal
	}
	switch {
	case r.Error != nil:
		msg, text = r.Error.Message, r.Error.Traceback
	default:
		lines := strings.Split(strings.TrimRight(r.Stderr, "\n\t "), "\n")
		if l := strings.TrimSpace(lines[len(lines)-1]); l != "" {
			msg = l
		}
		text = r.Stderr
	}
	if msg == "" {
		msg = exit
	} else {
		msg += " (" + exit + ")"
	}
	if name, _, ok := strings.Cut(msg, ":"); ok && !strings.ContainsAny(name, " \t") {
		typ = name
	}
	return msg, typ, text
}

func stacksText(s *job.Summary) string {
	var b strings.Builder
	for _, r := range s.Ranks {
		if r.Stack != nil && r.Stack.Text != "" {
			fmt.Fprintf(&b, "rank %d (pid %d):\n%s\n", r.Rank, r.Pid, r.Stack.Text)
		}
	}
	return b.String()
}

func (s junitSuite) counted() junitSuite {
	var total time.Duration
	s.Tests, s.Failures, s.Skipped = len(s.Cases), 0, 0
	for _, c := range s.Cases {
		switch {
		case c.Failure != nil:
			s.Failures++
		case c.Skipped != nil:
			s.Skipped++
		}
		d, _ := time.ParseDuration(c.Time + "s")
		total = max(total, d)
	}
	s.Time = seconds(total)
	return s
}

func junitTotals(suites []junitSuite) *junitSuites {
	all := &junitSuites{Name: "mpspawn", Suites: suites}
	var total time.Duration
	for _, s := range suites {
		all.Tests += s.Tests
		all.Failures += s.Failures
		d, _ := time.ParseDuration(s.Time + "s")
		total += d
	}
	all.Time = seconds(total)
	return all
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }

// writeJUnit writes the report to path atomically: a temporary file in
// the same directory (created as any file is, under the umask), renamed
// over path once complete, so that a CI system never reads half a report.
func writeJUnit(path string, rep *junitSuites) error {
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%s.%d.tmp", filepath.Base(path), os.Getpid()))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("--junit-xml %s: %w", path, err)
	}
	err = encodeJUnit(f, rep)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("--junit-xml %s: %w", path, err)
	}
	return nil
}

func encodeJUnit(w io.Writer, rep *junitSuites) error {
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(rep); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}
