"""costream.pipelines."""
