package pipelines

// Sandbox says how a function's instances are confined.
type Sandbox struct {
	// Files is a directory holding the function's own files, mounted
	// read-only as its root.
	Files string `yaml:"files,omitempty" doc:"Directory holding the function's own files; mounted read-only as its root."`
}

func applySandboxDefaults(p *Pipeline) {}

func (d *decoder) validateSandbox(p *Pipeline) {}
