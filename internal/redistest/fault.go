package redistest

import (
	"fmt"
	"os/exec"
	"syscall"
	"time"
)

// Restart kills the server (SIGKILL: no shutdown, nothing saved, the script
// cache is gone) and starts it again on the same port with the same flags.
func (s *Server) Restart() error {
	args := s.cmd.Args
	s.kill()
	cmd := exec.Command(args[0], args[1:]...)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("restart redis-server: %w", err)
	}
	s.cmd = cmd
	return waitReady(s.Addr, 5*time.Second)
}

// Kill stops the server (SIGKILL) but keeps its port and flags, so a later
// Restart brings it back: an outage of any length.
func (s *Server) Kill() { s.kill() }

// Pause freezes the server process (SIGSTOP): connections stay open but
// nothing is answered, like a server stuck in a long command or a swap storm.
func (s *Server) Pause() error { return s.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume undoes Pause (SIGCONT).
func (s *Server) Resume() error { return s.cmd.Process.Signal(syscall.SIGCONT) }

func (s *Server) kill() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGCONT) // a paused server must not stay behind
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
}
