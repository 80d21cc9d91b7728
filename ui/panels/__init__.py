"""Side panels: diagnosis / plan editor, job queue, mask tools."""
