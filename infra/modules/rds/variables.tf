variable "name" {
  description = "Identifier of the DB instance and name prefix of its companions (subnet group, parameter group, secret)."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the DB subnet group (at least two AZs)."
  type        = list(string)
}

variable "security_group_id" {
  description = "Security group of the DB instance (from the security module)."
  type        = string
}

variable "engine_version" {
  description = "PostgreSQL version: a major (\"16\") lets RDS pick the current minor; auto minor upgrades stay on."
  type        = string
  default     = "16"
}

variable "instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "allocated_storage" {
  description = "Initial storage in GiB (gp3)."
  type        = number
  default     = 50
}

variable "max_allocated_storage" {
  description = "Upper bound in GiB for storage autoscaling (0 disables autoscaling)."
  type        = number
  default     = 500
}

variable "database_name" {
  description = "Name of the application database."
  type        = string
  default     = "chatty"
}

variable "username" {
  description = "Master user name (the application connects with it; migrations need DDL rights)."
  type        = string
  default     = "chatty"
}

variable "app_username" {
  description = "The application role the serving tasks connect as (created by `chatty migrate`); must differ from username."
  type        = string
  default     = "chatty_app"

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_]{0,62}$", var.app_username))
    error_message = "app_username must be a lower-case PostgreSQL identifier."
  }
}

variable "ca_bundle_path" {
  description = "Path of the RDS CA bundle inside the image (the Dockerfile puts it there)."
  type        = string
  default     = "/usr/local/share/chatty/rds-global-bundle.pem"
}

variable "multi_az" {
  description = "Run a synchronous standby in a second AZ with automatic failover."
  type        = bool
  default     = true
}

variable "backup_retention_days" {
  description = "Days of automated backups and point-in-time recovery (1-35)."
  type        = number
  default     = 14

  validation {
    condition     = var.backup_retention_days >= 1 && var.backup_retention_days <= 35
    error_message = "backup_retention_days must be between 1 and 35: backups stay on."
  }
}

variable "backup_window" {
  description = "Daily UTC window for automated backups (hh24:mi-hh24:mi), outside the maintenance window."
  type        = string
  default     = "02:00-03:00"
}

variable "maintenance_window" {
  description = "Weekly UTC maintenance window (ddd:hh24:mi-ddd:hh24:mi)."
  type        = string
  default     = "sun:03:30-sun:04:30"
}

variable "deletion_protection" {
  description = "Protect the instance against deletion."
  type        = bool
  default     = true
}

variable "kms_key_arn" {
  description = "KMS key for storage encryption and Performance Insights. null uses the AWS-managed RDS key (encryption stays on)."
  type        = string
  default     = null
}

variable "performance_insights_enabled" {
  description = "Enable Performance Insights (not available on the smallest instance classes)."
  type        = bool
  default     = true
}

variable "apply_immediately" {
  description = "Apply modifications immediately instead of in the next maintenance window."
  type        = bool
  default     = false
}

variable "secret_recovery_window_days" {
  description = "Recovery window of the Secrets Manager secret holding the master password (0 deletes immediately)."
  type        = number
  default     = 7
}

variable "tags" {
  description = "Tags added to every resource of this module."
  type        = map(string)
  default     = {}
}
