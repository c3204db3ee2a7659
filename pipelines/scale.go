package pipelines

// Scale bounds a function's pool of warm instances.
type Scale struct {
	// Min instances kept warm.
	Min int `yaml:"min,omitempty" doc:"Instances kept warm."`
	// Max instances.
	Max int `yaml:"max,omitempty" doc:"Most instances."`
}

func applyScaleDefaults(p *Pipeline) {}

func (d *decoder) validateScale(p *Pipeline) {}
