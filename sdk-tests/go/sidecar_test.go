package sdktests

// Starting a fresh outrigger for the suite: port 0 on 127.0.0.1, a new SQLite file, ready once
// it logs "listening addr=<ip:port>". Its output goes to a log file for the whole run.

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"time"
)

type sidecar struct {
	cmd     *exec.Cmd
	address string
	dir     string
	done    chan struct{}
}

var listening = regexp.MustCompile(`listening addr=([^\s",]+)`)

func binary() (string, error) {
	if bin := os.Getenv("OUTRIGGER_BIN"); bin != "" {
		return bin, nil
	}
	for _, profile := range []string{"release", "debug"} {
		candidate := filepath.Join("..", "..", "target", profile, "outrigger")
		if _, err := os.Stat(candidate); err == nil {
			return filepath.Abs(candidate)
		}
	}
	return "", fmt.Errorf("no outrigger binary: run `cargo build --release` or set OUTRIGGER_BIN")
}

func startSidecar(logPath string) (*sidecar, error) {
	bin, err := binary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "outrigger-go-")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--host", "127.0.0.1", "--port", "0", "--database-url", "sqlite://"+filepath.Join(dir, "hub.db"))
	cmd.Env = append(os.Environ(), "NO_COLOR=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &sidecar{cmd: cmd, dir: dir, done: make(chan struct{})}
	ready := make(chan string, 1)
	go func() {
		defer close(s.done)
		defer log.Close()
		lines := bufio.NewReader(out)
		found := false
		for {
			line, err := lines.ReadString('\n')
			log.WriteString(line)
			if !found {
				if m := listening.FindStringSubmatch(line); m != nil {
					found = true
					ready <- m[1]
				}
			}
			if err == io.EOF || err != nil {
				return
			}
		}
	}()
	select {
	case addr := <-ready:
		s.address = addr
		return s, nil
	case <-s.done:
		return nil, fmt.Errorf("outrigger exited before listening; see %s", logPath)
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		return nil, fmt.Errorf("outrigger did not log 'listening addr=' within 30s; see %s", logPath)
	}
}

func (s *sidecar) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
	}
	s.cmd.Wait()
	os.RemoveAll(s.dir)
}
