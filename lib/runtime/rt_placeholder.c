/* placeholder so the target has a source; replaced by the runtime */
int mt_rt_placeholder_;
