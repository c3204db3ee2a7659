package pipelines

import "time"

// Scale bounds a function's pool of warm instances. Each route's chain runs
// its own pool of each function it uses.
//
// Defaults: with no scale block, min = max = instances (the shorthand, whose
// default is 1), so every instance is started with the pipeline and kept.
// With a scale block, max defaults to instances (or to min, when that is
// larger), min to 1 (capped at max), idle_timeout to 5m. min: 0 scales the
// function to zero: no process runs until a record arrives.
type Scale struct {
	// Min instances kept warm; 0 lets the pool scale to zero.
	Min *int `yaml:"min,omitempty" min:"0" doc:"Instances kept warm, started with the pipeline and never stopped for idleness; 0 scales to zero. Default 1 (with scale), or instances."`
	// Max instances: the slots records are dispatched to.
	Max int `yaml:"max,omitempty" min:"1" doc:"Most instances: records are dispatched by key, partition or turn to this many slots, each starting its process on demand. Default instances."`
	// IdleTimeout stops an instance above min that had no work this long.
	IdleTimeout Duration `yaml:"idle_timeout,omitempty" doc:"An instance above min that had no work for this long is stopped, and started again on its next record; default 5m."`
}

const defaultIdleTimeout = 5 * time.Minute

// MinOrZero returns the resolved minimum (after Load, never nil).
func (s Scale) MinOrZero() int {
	if s.Min == nil {
		return 0
	}
	return *s.Min
}

func applyScaleDefaults(p *Pipeline) {
	for _, f := range p.Functions {
		s := &f.Scale
		if s.Min == nil && s.Max == 0 && s.IdleTimeout == 0 {
			// The instances shorthand: a fixed pool.
			n := max(f.Instances, 1)
			s.Min, s.Max = &n, n
			setDur(&s.IdleTimeout, defaultIdleTimeout)
			continue
		}
		if s.Max == 0 {
			s.Max = max(f.Instances, 1, s.MinOrZero())
		}
		if s.Min == nil {
			n := min(1, s.Max)
			s.Min = &n
		}
		setDur(&s.IdleTimeout, defaultIdleTimeout)
		f.Instances = s.Max
	}
}

func (d *decoder) validateScale(p *Pipeline) {
	for _, name := range sortedKeys(p.Functions) {
		f := p.Functions[name]
		path := joinPath("functions", name)
		_, hasScale := d.pos[path+".scale"]
		if f.Instances != 0 && hasScale {
			d.errorf(d.posOf(path+".instances"), path+".instances", "instances is shorthand for scale: {min: N, max: N}; set one of instances and scale")
		}
		if f.Scale.Min != nil && f.Scale.Max != 0 && *f.Scale.Min > f.Scale.Max {
			d.errorf(d.posOf(path+".scale.min"), path+".scale.min", "min %d exceeds max %d", *f.Scale.Min, f.Scale.Max)
		}
	}
}
