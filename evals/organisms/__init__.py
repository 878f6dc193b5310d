"""Model organisms: a base model, a finetune, and the ground truth of what the finetune did."""

from evals.organisms.registry import get_organism, list_organisms, load_organism_file
from evals.organisms.schema import Organism, OrganismType

__all__ = ["Organism", "OrganismType", "get_organism", "list_organisms", "load_organism_file"]
