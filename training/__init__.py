"""Transfer learning from face recognition to facial diagnosis (workstation side; needs torch)."""
